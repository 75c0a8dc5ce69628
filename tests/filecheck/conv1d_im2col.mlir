// RUN: tilecraft-opt %s -p conv-im2col | filecheck %s

// A 1-D convolution (a speech encoder's stem, 3 taps, stride 2) is restated over a unit
// height and then takes the 2-D layers' path: its bound filter [F, C, K] is relaid out as
// a GEMM's [K*C, F] operand (the argument type changes with it), no 1-D convolution is
// left to run as scalar loops, and the result comes back as [N, F, OW].
// CHECK-LABEL: func.func @stem(
// CHECK-SAME: %[[W:[^:]+]]: tensor<48x16xf32>, %{{.*}}: tensor<1x16x66xf32>) -> tensor<1x16x32xf32>
// CHECK-NOT: linalg.conv_1d_ncw_fcw
// CHECK: linalg.matmul
// CHECK-SAME: %[[W]]
// CHECK: return %{{.*}} : tensor<1x16x32xf32>
func.func @stem(%w: tensor<16x16x3xf32>, %x: tensor<1x16x66xf32>) -> tensor<1x16x32xf32> attributes {tc.bound_args = 1 : i64} {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x16x32xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<1x16x32xf32>) -> tensor<1x16x32xf32>
  %c = linalg.conv_1d_ncw_fcw {dilations = dense<1> : vector<1xi64>, strides = dense<2> : vector<1xi64>}
    ins(%x, %w : tensor<1x16x66xf32>, tensor<16x16x3xf32>) outs(%f : tensor<1x16x32xf32>) -> tensor<1x16x32xf32>
  return %c : tensor<1x16x32xf32>
}
