// RUN: tilecraft-opt %s -p "fuse{strategy=maximal}" | filecheck %s

// The rewrite (the largest legal group, no cost model): a convolution and its batch-norm +
// ReLU epilogue become one loop nest: the ReLU is tiled
// over output channels, the conv (with its zero fill) and the epilogue are fused into the
// tiles, and the epilogue again into register tiles (one channel at a time).
// CHECK-LABEL: func.func @conv_bn_relu
// CHECK: scf.for
// CHECK: linalg.fill
// CHECK: linalg.conv_2d_nchw_fchw
// CHECK: scf.for
// CHECK: tc.fused
// CHECK: arith.mulf
// CHECK: tc.fused
// CHECK: arith.addf
// CHECK: tc.fused
// CHECK: arith.maximumf
// CHECK-NOT: linalg.generic
// CHECK: return
#id = affine_map<(n, c, h, w) -> (n, c, h, w)>
#ch = affine_map<(n, c, h, w) -> (c)>
func.func @conv_bn_relu(%x: tensor<1x32x58x58xf32>, %w: tensor<128x32x3x3xf32>, %s: tensor<128xf32>, %b: tensor<128xf32>) -> tensor<1x128x56x56xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x128x56x56xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<1x128x56x56xf32>) -> tensor<1x128x56x56xf32>
  %c = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%x, %w : tensor<1x32x58x58xf32>, tensor<128x32x3x3xf32>) outs(%f : tensor<1x128x56x56xf32>) -> tensor<1x128x56x56xf32>
  %m = linalg.generic {indexing_maps = [#id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%c, %s : tensor<1x128x56x56xf32>, tensor<128xf32>) outs(%e : tensor<1x128x56x56xf32>) {
  ^bb0(%in: f32, %sc: f32, %out: f32):
    %r = arith.mulf %in, %sc : f32
    linalg.yield %r : f32
  } -> tensor<1x128x56x56xf32>
  %a = linalg.generic {indexing_maps = [#id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%m, %b : tensor<1x128x56x56xf32>, tensor<128xf32>) outs(%e : tensor<1x128x56x56xf32>) {
  ^bb0(%in: f32, %sh: f32, %out: f32):
    %r = arith.addf %in, %sh : f32
    linalg.yield %r : f32
  } -> tensor<1x128x56x56xf32>
  %y = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%a : tensor<1x128x56x56xf32>) outs(%e : tensor<1x128x56x56xf32>) {
  ^bb0(%in: f32, %out: f32):
    %r = arith.maximumf %in, %zero : f32
    linalg.yield %r : f32
  } -> tensor<1x128x56x56xf32>
  return %y : tensor<1x128x56x56xf32>
}
