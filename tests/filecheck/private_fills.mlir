// RUN: tilecraft-opt %s -p private-fills | filecheck %s

// One zero fill is the accumulator of two matmuls, and its empty tensor is also the output
// of an elementwise op. Each matmul gets its own fill, of its own empty tensor: fused, an
// accumulator is then recomputed per tile with its contraction, and aliases nothing else.
// The original empty tensor is left to the elementwise op.
// CHECK-LABEL: func.func @shared_accumulator(
// CHECK: %[[E0:[^ ]+]] = tensor.empty() : tensor<8x16xf32>
// CHECK-NEXT: %[[E1:[^ ]+]] = tensor.empty() : tensor<8x16xf32>
// CHECK-NEXT: %[[F1:[^ ]+]] = linalg.fill ins(%{{.*}} : f32) outs(%[[E1]] : tensor<8x16xf32>)
// CHECK-NEXT: %[[E2:[^ ]+]] = tensor.empty() : tensor<8x16xf32>
// CHECK-NEXT: %[[F2:[^ ]+]] = linalg.fill ins(%{{.*}} : f32) outs(%[[E2]] : tensor<8x16xf32>)
// CHECK-NEXT: linalg.matmul {{.*}} outs(%[[F1]] : tensor<8x16xf32>)
// CHECK-NEXT: linalg.matmul {{.*}} outs(%[[F2]] : tensor<8x16xf32>)
// CHECK-NEXT: linalg.generic {{.*}} outs(%[[E0]] : tensor<8x16xf32>)
func.func @shared_accumulator(%a: tensor<8x32xf32>, %b: tensor<32x16xf32>, %c: tensor<32x16xf32>) -> tensor<8x16xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %x = linalg.matmul ins(%a, %b : tensor<8x32xf32>, tensor<32x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %y = linalg.matmul ins(%a, %c : tensor<8x32xf32>, tensor<32x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %s = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]}
    ins(%x, %y : tensor<8x16xf32>, tensor<8x16xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%p: f32, %q: f32, %o: f32):
    %r = arith.addf %p, %q : f32
    linalg.yield %r : f32
  } -> tensor<8x16xf32>
  return %s : tensor<8x16xf32>
}
