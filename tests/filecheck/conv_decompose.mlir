// RUN: tilecraft-opt %s -p "cpu-tiled{vectorize=false}" | filecheck %s

// A 2-D convolution's register tile (oh = kh = 1) is decomposed into a 1-D convolution,
// with the filter-stationary loop order f, c, kh outside oh, ow.
// CHECK-LABEL: func.func @conv
// CHECK-COUNT-4: scf.for
// CHECK: linalg.conv_1d_ncw_fcw {{.*}} ins({{.*}} : tensor<1x16x{{[0-9]+}}xf32>, tensor<32x16x3xf32>) outs({{.*}} : tensor<1x32x8xf32>)
// CHECK-NOT: linalg.conv_2d
func.func @conv(%x: tensor<1x16x18x18xf32>, %w: tensor<32x16x3x3xf32>) -> tensor<1x32x16x16xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x32x16x16xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<1x32x16x16xf32>) -> tensor<1x32x16x16xf32>
  %r = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%x, %w : tensor<1x16x18x18xf32>, tensor<32x16x3x3xf32>) outs(%f : tensor<1x32x16x16xf32>) -> tensor<1x32x16x16xf32>
  return %r : tensor<1x32x16x16xf32>
}
