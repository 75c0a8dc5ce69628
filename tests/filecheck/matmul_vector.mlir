// RUN: tilecraft-opt %s -p cpu-tiled,cpu-vector | filecheck %s

// After bufferization the function works on memrefs; the contraction is lowered to
// FMAs on 32-wide rows and the accumulator is carried through the k loop in registers.
// CHECK-LABEL: func.func @mm(%{{.*}}: memref<64x64xf32>, %{{.*}}: memref<64x64xf32>) -> memref<64x64xf32>
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (vector<8x32xf32>)
// CHECK: vector.fma {{.*}} : vector<32xf32>
// CHECK-NOT: tensor.
func.func @mm(%a: tensor<64x64xf32>, %b: tensor<64x64xf32>) -> tensor<64x64xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %r = linalg.matmul ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  return %r : tensor<64x64xf32>
}
