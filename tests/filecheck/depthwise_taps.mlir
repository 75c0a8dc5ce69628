// RUN: tilecraft-opt %s -p depthwise-taps | filecheck %s

// A stride-1 depthwise convolution does not vectorize as a named op; it is restated as one
// all-parallel generic over its taps: per tap (i, j) a shifted [1, C, OH, OW] slice of the
// input (read through the identity) and a [C] slice of the filter (read through c), so
// every map is a projected permutation and the op vectorizes along the output width. The
// zero-filled accumulator is dropped: the first tap's product starts the sum, so a 3x3
// window takes 9 products and 8 additions. A strided depthwise convolution stays (its taps
// would be strided vector reads, which gain nothing). Beside NHWC layers both run on NHWC:
// depthwise_nhwc.mlir.
// CHECK-LABEL: func.func @depthwise(
// CHECK-SAME: %[[X:[^:]+]]: tensor<1x32x10x10xf32>, %[[W:[^:]+]]: tensor<32x3x3xf32>
// CHECK-NOT: linalg.fill
// CHECK: tensor.extract_slice %[[X]][0, 0, 0, 0] [1, 32, 8, 8] [1, 1, 1, 1] : tensor<1x32x10x10xf32> to tensor<1x32x8x8xf32>
// CHECK: tensor.extract_slice %[[W]][0, 0, 0] [32, 1, 1] [1, 1, 1] : tensor<32x3x3xf32> to tensor<32xf32>
// CHECK: tensor.extract_slice %[[X]][0, 0, 2, 2] [1, 32, 8, 8] [1, 1, 1, 1]
// CHECK: tensor.extract_slice %[[W]][0, 2, 2] [32, 1, 1]
// CHECK-NOT: linalg.fill
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel", "parallel"]
// CHECK-SAME: outs(%{{.*}} : tensor<1x32x8x8xf32>)
// CHECK: arith.mulf
// CHECK-COUNT-8: arith.addf
// CHECK-NEXT: linalg.yield
// CHECK: linalg.depthwise_conv_2d_nchw_chw {{.*}}strides = dense<2>
// CHECK-SAME: -> tensor<1x32x4x4xf32>
func.func @depthwise(%x: tensor<1x32x10x10xf32>, %w: tensor<32x3x3xf32>, %w2: tensor<32x3x3xf32>)
    -> (tensor<1x32x8x8xf32>, tensor<1x32x4x4xf32>) {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x32x8x8xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<1x32x8x8xf32>) -> tensor<1x32x8x8xf32>
  %r = linalg.depthwise_conv_2d_nchw_chw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%x, %w : tensor<1x32x10x10xf32>, tensor<32x3x3xf32>) outs(%f : tensor<1x32x8x8xf32>) -> tensor<1x32x8x8xf32>
  %e2 = tensor.empty() : tensor<1x32x4x4xf32>
  %f2 = linalg.fill ins(%zero : f32) outs(%e2 : tensor<1x32x4x4xf32>) -> tensor<1x32x4x4xf32>
  %r2 = linalg.depthwise_conv_2d_nchw_chw {dilations = dense<1> : vector<2xi64>, strides = dense<2> : vector<2xi64>}
    ins(%x, %w2 : tensor<1x32x10x10xf32>, tensor<32x3x3xf32>) outs(%f2 : tensor<1x32x4x4xf32>) -> tensor<1x32x4x4xf32>
  return %r, %r2 : tensor<1x32x8x8xf32>, tensor<1x32x4x4xf32>
}
