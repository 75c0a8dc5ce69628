// RUN: tilecraft-opt %s -p conv-im2col,depthwise-taps,sink-transposes | filecheck %s

// A depthwise layer between two 1x1 layers (GEMMs on NHWC after conv-im2col) is restated on
// NHWC, stride 2 included, and sink-transposes cancels every transpose between the three.
// Its zero padding becomes one flat pad of the expansion's [H*W, C] result: 13 zero rows
// before it (a padded row, 12 pixels, and one column) and the rest after. Each tap (i, j)
// reads rows i*12 + j onwards, as [OH + 1, 2*12, C], every second pixel of each row.
// Column 0 of the output reads padding through its j = 0 taps (they land on the previous
// row's last pixel): those taps are summed apart and selected away at x = 0 (linalg.index).
// The filter is relaid out [KH, KW, C] (the function's argument type changes with it), so
// each tap's weights are a vector of channels; the taps are fused multiply-adds.
// CHECK-LABEL: func.func @inverted_residual(
// CHECK-SAME: %[[WE:[^:]+]]: tensor<16x32xf32>, %[[WD:[^:]+]]: tensor<3x3x32xf32>, %[[WP:[^:]+]]: tensor<32x16xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %[[WE]] : tensor<144x16xf32>, tensor<16x32xf32>)
// CHECK: %[[P:.+]] = tensor.pad %{{.*}} low[13, 0] high[{{[0-9]+}}, 0]
// CHECK: } : tensor<144x32xf32> to tensor<[[L:[0-9]+]]x32xf32>
// CHECK: tensor.extract_slice %[[P]][0, 0] [168, 32] [1, 1] : tensor<[[L]]x32xf32> to tensor<168x32xf32>
// CHECK: tensor.expand_shape {{.*}} output_shape [7, 24, 32]
// CHECK: tensor.extract_slice {{.*}}[0, 0, 0] [6, 6, 32] [1, 2, 1] : tensor<7x24x32xf32> to tensor<6x6x32xf32>
// CHECK: tensor.extract_slice %[[WD]][0, 0, 0] [1, 1, 32] [1, 1, 1] : tensor<3x3x32xf32> to tensor<32xf32>
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel"]
// CHECK-SAME: outs(%{{.*}} : tensor<6x6x32xf32>)
// CHECK: linalg.index 1
// CHECK: math.fma
// CHECK: arith.cmpi uge
// CHECK: arith.select
// CHECK: linalg.matmul ins(%{{.*}}, %[[WP]] : tensor<36x32xf32>, tensor<32x16xf32>)
// CHECK-NOT: tensor.pad
// CHECK: return
func.func @inverted_residual(%we: tensor<32x16x1x1xf32>, %wd: tensor<32x1x3x3xf32>, %wp: tensor<16x32x1x1xf32>,
                             %x: tensor<1x16x12x12xf32>) -> tensor<1x16x6x6xf32>
    attributes {tc.bound_args = 3 : i64} {
  %zero = arith.constant 0.0 : f32
  %ee = tensor.empty() : tensor<1x32x12x12xf32>
  %fe = linalg.fill ins(%zero : f32) outs(%ee : tensor<1x32x12x12xf32>) -> tensor<1x32x12x12xf32>
  %e = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%x, %we : tensor<1x16x12x12xf32>, tensor<32x16x1x1xf32>) outs(%fe : tensor<1x32x12x12xf32>) -> tensor<1x32x12x12xf32>
  %p = tensor.pad %e low[0, 0, 1, 1] high[0, 0, 1, 1] {
  ^bb0(%a: index, %b: index, %c: index, %d: index):
    tensor.yield %zero : f32
  } : tensor<1x32x12x12xf32> to tensor<1x32x14x14xf32>
  %wdc = tensor.collapse_shape %wd [[0, 1], [2], [3]] : tensor<32x1x3x3xf32> into tensor<32x3x3xf32>
  %ed = tensor.empty() : tensor<1x32x6x6xf32>
  %fd = linalg.fill ins(%zero : f32) outs(%ed : tensor<1x32x6x6xf32>) -> tensor<1x32x6x6xf32>
  %d = linalg.depthwise_conv_2d_nchw_chw {dilations = dense<1> : vector<2xi64>, strides = dense<2> : vector<2xi64>}
    ins(%p, %wdc : tensor<1x32x14x14xf32>, tensor<32x3x3xf32>) outs(%fd : tensor<1x32x6x6xf32>) -> tensor<1x32x6x6xf32>
  %ep = tensor.empty() : tensor<1x16x6x6xf32>
  %fp = linalg.fill ins(%zero : f32) outs(%ep : tensor<1x16x6x6xf32>) -> tensor<1x16x6x6xf32>
  %r = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%d, %wp : tensor<1x32x6x6xf32>, tensor<16x32x1x1xf32>) outs(%fp : tensor<1x16x6x6xf32>) -> tensor<1x16x6x6xf32>
  return %r : tensor<1x16x6x6xf32>
}
