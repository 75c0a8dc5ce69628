// RUN: tilecraft-opt %s -p reciprocal-constants | filecheck %s

// A division by a constant (GELU's x / sqrt(2), here a division by 4.0 written as torch-mlir
// writes a Python scalar: an f64 constant truncated in the body) is a multiplication by
// the constant's reciprocal, 0.25: a division costs about ten multiplications' throughput.
// A division by a value that is not a constant, or by zero, stays.
// CHECK-LABEL: func.func @scale
// CHECK: ^bb0(%[[A:[^:]+]]: f32, %[[B:[^:]+]]: f32,
// CHECK: %[[R:[^ ]+]] = arith.constant 2.500000e-01 : f32
// CHECK-NEXT: %[[Q:[^ ]+]] = arith.mulf %[[A]], %[[R]] : f32
// CHECK-NEXT: %[[D:[^ ]+]] = arith.divf %[[Q]], %[[B]] : f32
// CHECK-NEXT: %{{.*}} = arith.divf %[[D]], %{{.*}} : f32
// CHECK-NEXT: linalg.yield
func.func @scale(%x: tensor<8x16xf32>, %y: tensor<8x16xf32>) -> tensor<8x16xf32> {
  %four = arith.constant 4.0 : f64
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]}
    ins(%x, %y : tensor<8x16xf32>, tensor<8x16xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %c = arith.truncf %four : f64 to f32
    %q = arith.divf %a, %c : f32
    %d = arith.divf %q, %b : f32
    %z = arith.divf %d, %zero : f32
    linalg.yield %z : f32
  } -> tensor<8x16xf32>
  return %r : tensor<8x16xf32>
}
