// RUN: tilecraft-opt %s -p conv-im2col | filecheck %s

// A patch embedding (a ViT stem: 4x4 windows, stride 4, tiling the 3x16x16 input exactly)
// is one GEMM with K = C*KH*KW = 48 on a column matrix that is a pure relayout of the
// input: split into [N, C, OH, KH, OW, KW] and permuted to [N, OH, OW, C, KH, KW] by one
// generic whose map is a permutation (it vectorizes). No tap chain of 16 K=3 matmuls.
// CHECK-LABEL: func.func @patch_embed(
// CHECK-SAME: %[[W:[^:]+]]: tensor<48x32xf32>
// CHECK: tensor.expand_shape %{{.*}} {{\[}}[0], [1], [2, 3], [4, 5]] output_shape [1, 3, 4, 4, 4, 4]
// CHECK: linalg.generic {indexing_maps = [#{{map[0-9]*}}, #{{map[0-9]*}}]
// CHECK: tensor.collapse_shape %{{.*}} : tensor<1x4x4x3x4x4xf32> into tensor<16x48xf32>
// CHECK-COUNT-1: linalg.matmul
// CHECK-NOT: linalg.matmul
func.func @patch_embed(%w: tensor<32x3x4x4xf32>, %x: tensor<1x3x16x16xf32>) -> tensor<1x32x4x4xf32> attributes {tc.bound_args = 1 : i64} {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x32x4x4xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<1x32x4x4xf32>) -> tensor<1x32x4x4xf32>
  %c = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<4> : vector<2xi64>}
    ins(%x, %w : tensor<1x3x16x16xf32>, tensor<32x3x4x4xf32>) outs(%f : tensor<1x32x4x4xf32>) -> tensor<1x32x4x4xf32>
  return %c : tensor<1x32x4x4xf32>
}
