// RUN: tilecraft-opt %s -p cpu-lower | filecheck %s

// The result becomes an out-parameter, and the function is its own C interface (every
// memref by pointer, the descriptors loaded first).
// CHECK-NOT: llvm.func @mm(
// CHECK: llvm.func @_mlir_ciface_mm(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// CHECK: llvm.intr.fmuladd{{.*}}vector<32xf32>
// CHECK-NOT: unrealized_conversion_cast
func.func @mm(%a: tensor<64x64xf32>, %b: tensor<64x64xf32>) -> tensor<64x64xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %r = linalg.matmul ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  return %r : tensor<64x64xf32>
}
