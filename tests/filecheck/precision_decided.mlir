// RUN: tilecraft-opt %s -p precision | filecheck %s

// precision{mode=decided} applies the module's plan (tc.precision: one record per
// contraction, in order) and moves it to tc.precision_applied. Layer 0 runs in bf16: its
// weight is a bound argument, so it is packed once, at compile time, into the blocked VNNI
// layout (N/16 x K/2 x 16 x 2 bf16; the argument's type changes, and no packing op is left
// in the function); the activation is rounded to bf16 at run time, and the contraction
// becomes a tc.amx generic on a zero fill marked for the kernel. Layer 1 stays f32.
// CHECK: module attributes {tc.precision_applied = [
// CHECK-NOT: tc.precision =
// CHECK-LABEL: func.func @mlp(
// CHECK-SAME: %[[W1:[^:]+]]: tensor<2x32x16x2xbf16>, %[[W2:[^:]+]]: tensor<32x32xf32>, %[[X:[^:]+]]: tensor<16x64xf32>
// CHECK: linalg.generic {{.*}} ins(%[[X]] : tensor<16x64xf32>) outs(%{{.*}} : tensor<16x64xbf16>)
// CHECK: arith.truncf %{{.*}} : f32 to bf16
// CHECK: %[[A:[^ ]+]] = tensor.expand_shape {{.*}} into tensor<16x32x2xbf16>
// CHECK-NOT: linalg.generic
// CHECK: linalg.fill {tc.amx_init = "__tc_lp_0"} {{.*}} -> tensor<16x2x16xf32>
// CHECK: linalg.generic {{.*}} ins(%[[A]], %[[W1]] : tensor<16x32x2xbf16>, tensor<2x32x16x2xbf16>) outs(%{{.*}} : tensor<16x2x16xf32>)
// CHECK-SAME: tc.amx
// CHECK: tensor.collapse_shape {{.*}} into tensor<16x32xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %[[W2]] : tensor<16x32xf32>, tensor<32x32xf32>)
module attributes {tc.precision = ["{\"layer\": 0, \"precision\": \"bf16\"}", "{\"layer\": 1, \"precision\": \"f32\"}"]} {
  func.func @mlp(%w1: tensor<64x32xf32>, %w2: tensor<32x32xf32>, %x: tensor<16x64xf32>) -> tensor<16x32xf32>
      attributes {tc.bound_args = 2 : i64} {
    %zero = arith.constant 0.0 : f32
    %e = tensor.empty() : tensor<16x32xf32>
    %f = linalg.fill ins(%zero : f32) outs(%e : tensor<16x32xf32>) -> tensor<16x32xf32>
    %h = linalg.matmul ins(%x, %w1 : tensor<16x64xf32>, tensor<64x32xf32>) outs(%f : tensor<16x32xf32>) -> tensor<16x32xf32>
    %f2 = linalg.fill ins(%zero : f32) outs(%e : tensor<16x32xf32>) -> tensor<16x32xf32>
    %y = linalg.matmul ins(%h, %w2 : tensor<16x32xf32>, tensor<32x32xf32>) outs(%f2 : tensor<16x32xf32>) -> tensor<16x32xf32>
    return %y : tensor<16x32xf32>
  }
}
