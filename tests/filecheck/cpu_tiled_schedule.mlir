// RUN: tilecraft-opt %s -p cpu-tiled | filecheck %s

// A schedule carried on the op (tc.schedule, as the cost model or `tilecraft tune` writes
// it) is applied instead of the heuristic (which would tile this matmul into 8x32x1
// register tiles): cache tiles 16x32x8 (i, j, k), then register tiles 4x16x1, each
// vectorized as a 4x16x1 multiply reduced over k.
// CHECK-LABEL: func.func @mm
// CHECK: scf.for {{.*}} step %c16{{(_[0-9]+)?}} iter_args
// CHECK: scf.for {{.*}} step %c32{{(_[0-9]+)?}} iter_args
// CHECK: scf.for {{.*}} step %c8{{(_[0-9]+)?}} iter_args
// CHECK: tensor.extract_slice {{.*}} [16, 8] [1, 1] : tensor<64x64xf32> to tensor<16x8xf32>
// CHECK: tensor.extract_slice {{.*}} [8, 32] [1, 1] : tensor<64x64xf32> to tensor<8x32xf32>
// CHECK: scf.for {{.*}} step %c4{{(_[0-9]+)?}} iter_args
// CHECK: scf.for {{.*}} step %c16{{(_[0-9]+)?}} iter_args
// CHECK: scf.for {{.*}} step %c1{{(_[0-9]+)?}} iter_args
// CHECK: vector.multi_reduction <add>, {{.*}} [2] : vector<4x16x1xf32> to vector<4x16xf32>
// CHECK-NOT: vector<8x32xf32>
// CHECK-NOT: linalg.matmul
func.func @mm(%a: tensor<64x64xf32>, %b: tensor<64x64xf32>) -> tensor<64x64xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %r = linalg.matmul {tc.schedule = {tiles = [array<i64: 16, 32, 8>, array<i64: 4, 16, 1>]}}
    ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  return %r : tensor<64x64xf32>
}
