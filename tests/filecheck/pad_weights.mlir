// RUN: tilecraft-opt %s -p pad-weights | filecheck %s

// Bound matmul weights are given a better layout once, at compile time (the argument
// types change with it):
// - %w1 has 40 columns, not whole 16-lane vectors: it is padded with zero columns to 48,
//   the matmul computes [4, 48] on its own zero fill, and a slice keeps the first 40;
// - %w2's rows are 256 floats, 1 KB apart (rows that alias in the L1 sets): it is stored
//   16 columns wider, and the matmul reads its [40, 256] slice.
// %w3 (a 32-column weight that is not bound) keeps its layout.
// CHECK-LABEL: func.func @mlp(
// CHECK-SAME: %[[W1:[^:]+]]: tensor<32x48xf32>, %[[W2:[^:]+]]: tensor<40x272xf32>, %[[X:[^:]+]]: tensor<4x32xf32>, %[[W3:[^:]+]]: tensor<256x40xf32>
// CHECK: %[[F1:[^ ]+]] = linalg.fill {{.*}} -> tensor<4x48xf32>
// CHECK: %[[M1:[^ ]+]] = linalg.matmul ins(%[[X]], %[[W1]] : tensor<4x32xf32>, tensor<32x48xf32>) outs(%[[F1]] : tensor<4x48xf32>)
// CHECK: %[[A:[^ ]+]] = tensor.extract_slice %[[M1]][0, 0] [4, 40] [1, 1] : tensor<4x48xf32> to tensor<4x40xf32>
// CHECK: %[[B:[^ ]+]] = tensor.extract_slice %[[W2]][0, 0] [40, 256] [1, 1] : tensor<40x272xf32> to tensor<40x256xf32>
// CHECK: linalg.matmul ins(%[[A]], %[[B]] : tensor<4x40xf32>, tensor<40x256xf32>) {{.*}} -> tensor<4x256xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %[[W3]] : tensor<4x256xf32>, tensor<256x40xf32>)
func.func @mlp(%w1: tensor<32x40xf32>, %w2: tensor<40x256xf32>, %x: tensor<4x32xf32>, %w3: tensor<256x40xf32>)
    -> tensor<4x40xf32> attributes {tc.bound_args = 2 : i64} {
  %zero = arith.constant 0.0 : f32
  %e1 = tensor.empty() : tensor<4x40xf32>
  %f1 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<4x40xf32>) -> tensor<4x40xf32>
  %a = linalg.matmul ins(%x, %w1 : tensor<4x32xf32>, tensor<32x40xf32>) outs(%f1 : tensor<4x40xf32>) -> tensor<4x40xf32>
  %e2 = tensor.empty() : tensor<4x256xf32>
  %f2 = linalg.fill ins(%zero : f32) outs(%e2 : tensor<4x256xf32>) -> tensor<4x256xf32>
  %b = linalg.matmul ins(%a, %w2 : tensor<4x40xf32>, tensor<40x256xf32>) outs(%f2 : tensor<4x256xf32>) -> tensor<4x256xf32>
  %e3 = tensor.empty() : tensor<4x40xf32>
  %f3 = linalg.fill ins(%zero : f32) outs(%e3 : tensor<4x40xf32>) -> tensor<4x40xf32>
  %c = linalg.matmul ins(%b, %w3 : tensor<4x256xf32>, tensor<256x40xf32>) outs(%f3 : tensor<4x40xf32>) -> tensor<4x40xf32>
  return %c : tensor<4x40xf32>
}
