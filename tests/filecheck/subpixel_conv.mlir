// RUN: tilecraft-opt %s -p subpixel-conv | filecheck %s

// A 3x3 convolution (padding 1) of a 2x nearest upsampling of a [1, 16, 4, 4] image runs on
// the image itself: output phase (p, q) (pixels (2y + p, 2x + q)) is a 2x2 convolution of
// the small image, whose filter taps sum the 3x3 taps that land on one small pixel. The
// filter argument becomes the 16 phase taps [16, C, F]. The small image is padded by one
// on each side (one row more below, for the tap chains' wrapped rows), transposed to NHWC
// and flattened to rows of 6 pixels; phase (0, 0) reads rows 0, 1, 6 and 7 onwards, phase
// (1, 1) rows 7, 8, 13 and 14. Each phase's [4, 4, F] result (wrapped columns dropped) is
// inserted into [4, 2, 4, 2, F] at (p, q): that is the [8, 8, F] NHWC result. The
// upsampling gather (its tensor.extract) is gone; the bias is still added.
// CHECK-LABEL: func.func @upsample_conv(
// CHECK-SAME: %[[W:[^:]+]]: tensor<16x16x16xf32>
// CHECK-NOT: tensor.extract %
// CHECK: tensor.pad %{{.*}} low[0, 0, 1, 1] high[0, 0, 2, 1]
// CHECK: } : tensor<1x16x4x4xf32> to tensor<1x16x7x6xf32>
// CHECK: tensor.collapse_shape %{{.*}} {{\[\[}}0, 1, 2], [3]] : tensor<1x7x6x16xf32> into tensor<42x16xf32>
// CHECK: tensor.extract_slice %[[FLAT:[a-z_0-9]+]][0, 0] [24, 16]
// CHECK: linalg.matmul
// CHECK: tensor.extract_slice %[[FLAT]][1, 0] [24, 16]
// CHECK: tensor.extract_slice %[[FLAT]][6, 0] [24, 16]
// CHECK: tensor.extract_slice %[[FLAT]][7, 0] [24, 16]
// CHECK: tensor.extract_slice %[[W]][3, 0, 0] [1, 16, 16]
// CHECK: tensor.insert_slice %{{.*}}[0, 0, 0, 0, 0] [4, 1, 4, 1, 16] [1, 1, 1, 1, 1] : tensor<4x1x4x1x16xf32> into tensor<4x2x4x2x16xf32>
// CHECK: tensor.insert_slice %{{.*}}[0, 0, 0, 1, 0] [4, 1, 4, 1, 16]
// CHECK: tensor.insert_slice %{{.*}}[0, 1, 0, 0, 0] [4, 1, 4, 1, 16]
// CHECK: tensor.extract_slice %[[FLAT]][14, 0] [24, 16]
// CHECK: tensor.extract_slice %[[W]][15, 0, 0] [1, 16, 16]
// CHECK: tensor.insert_slice %{{.*}}[0, 1, 0, 1, 0] [4, 1, 4, 1, 16]
// CHECK: tensor.collapse_shape %{{.*}} : tensor<4x2x4x2x16xf32> into tensor<8x8x16xf32>
// CHECK: arith.addf
// CHECK-NOT: tensor.extract %
// CHECK: return
#map = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>
module {
  func.func @upsample_conv(%arg2: tensor<16x16x3x3xf32>, %arg3: tensor<16xf32>, %arg4: tensor<1x16x4x4xf32>) -> tensor<1x16x8x8xf32> attributes {tc.bound_args = 2 : i64} {
    %cst = arith.constant 0.000000e+00 : f32
    %cst_0 = arith.constant 2.000000e+00 : f32
    %c0 = arith.constant 0 : index
    %cst_1 = arith.constant 3.000000e+00 : f32
    %0 = tensor.empty() : tensor<1x16x8x8xf32>
    %1 = linalg.generic {indexing_maps = [#map], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} outs(%0 : tensor<1x16x8x8xf32>) {
    ^bb0(%out: f32):
      %3 = linalg.index 1 : index
      %4 = linalg.index 2 : index
      %5 = linalg.index 3 : index
      %6 = arith.index_cast %4 : index to i64
      %7 = arith.sitofp %6 : i64 to f32
      %8 = arith.divf %7, %cst_0 : f32
      %9 = math.floor %8 : f32
      %10 = arith.maximumf %9, %cst : f32
      %11 = arith.minimumf %10, %cst_1 : f32
      %12 = arith.fptosi %11 : f32 to i64
      %13 = arith.index_cast %12 : i64 to index
      %14 = arith.index_cast %5 : index to i64
      %15 = arith.sitofp %14 : i64 to f32
      %16 = arith.divf %15, %cst_0 : f32
      %17 = math.floor %16 : f32
      %18 = arith.maximumf %17, %cst : f32
      %19 = arith.minimumf %18, %cst_1 : f32
      %20 = arith.fptosi %19 : f32 to i64
      %21 = arith.index_cast %20 : i64 to index
      %extracted = tensor.extract %arg4[%c0, %3, %13, %21] : tensor<1x16x4x4xf32>
      linalg.yield %extracted : f32
    } -> tensor<1x16x8x8xf32>
    %padded = tensor.pad %1 low[0, 0, 1, 1] high[0, 0, 1, 1] {
    ^bb0(%arg5: index, %arg6: index, %arg7: index, %arg8: index):
      tensor.yield %cst : f32
    } : tensor<1x16x8x8xf32> to tensor<1x16x10x10xf32>
    %broadcasted = linalg.broadcast ins(%arg3 : tensor<16xf32>) outs(%0 : tensor<1x16x8x8xf32>) dimensions = [0, 2, 3] 
    %2 = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>} ins(%padded, %arg2 : tensor<1x16x10x10xf32>, tensor<16x16x3x3xf32>) outs(%broadcasted : tensor<1x16x8x8xf32>) -> tensor<1x16x8x8xf32>
    return %2 : tensor<1x16x8x8xf32>
  }
}
