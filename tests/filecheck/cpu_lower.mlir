// RUN: tilecraft-opt %s -p cpu-lower | filecheck %s --check-prefix=VEC
// RUN: tilecraft-opt %s -p "cpu-lower{vectorize=false}" | filecheck %s --check-prefix=SCALAR

// cpu-lower runs the three CPU stages (cpu-tiled, cpu-vector, cpu-llvm) in one pass, from a
// decided linalg module to the LLVM dialect: the function takes its result as an
// out-parameter and is its own C interface (three memref descriptors by pointer). Vectorized
// (the default), the matmul's register tiles are FMAs on 32-wide rows and the ReLU a
// vector maximum; with vectorize=false the same tiles run as scalar loops and no vector
// type is left.
// VEC-LABEL: llvm.func @_mlir_ciface_linear_relu(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// VEC-SAME: attributes {llvm.emit_c_interface}
// VEC: llvm.intr.fmuladd({{.*}}) : (vector<32xf32>, vector<32xf32>, vector<32xf32>) -> vector<32xf32>
// VEC: llvm.intr.maximum({{.*}}) : (vector<32xf32>, vector<32xf32>) -> vector<32xf32>

// SCALAR-LABEL: llvm.func @_mlir_ciface_linear_relu(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// SCALAR-NOT: vector<
// SCALAR: llvm.fmul {{.*}} : f32
// SCALAR-NEXT: llvm.fadd {{.*}} : f32
// SCALAR-NOT: vector<
// SCALAR: llvm.intr.maximum({{.*}}) : (f32, f32) -> f32
// SCALAR-NOT: vector<
func.func @linear_relu(%x: tensor<16x64xf32>, %w: tensor<64x32xf32>) -> tensor<16x32xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x32xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<16x32xf32>) -> tensor<16x32xf32>
  %m = linalg.matmul ins(%x, %w : tensor<16x64xf32>, tensor<64x32xf32>) outs(%f : tensor<16x32xf32>) -> tensor<16x32xf32>
  %y = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]}
    ins(%m : tensor<16x32xf32>) outs(%e : tensor<16x32xf32>) {
  ^bb0(%p: f32, %o: f32):
    %r = arith.maximumf %p, %zero : f32
    linalg.yield %r : f32
  } -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}
