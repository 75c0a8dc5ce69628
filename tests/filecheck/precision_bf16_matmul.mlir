// RUN: tilecraft-opt %s -p "precision{mode=bf16}" | filecheck %s --check-prefix=REWRITE
// RUN: tilecraft-opt %s -p "precision{mode=bf16},cpu-lower" | filecheck %s --check-prefix=AMX

// A bf16 matmul: the f32 activation is rounded to bf16; the B operand is converted and
// packed in one pass into the blocked VNNI layout (N/16 × K/2 × 16 × 2: each AMX tile one
// contiguous KB) at run time (its weight is not a bound value here); the zero fill of the
// accumulator is marked for the kernel, and the contraction becomes a `tc.amx` generic.
// REWRITE-LABEL: func.func @mm
// REWRITE: arith.truncf %{{.*}} : f32 to bf16
// REWRITE: tensor.expand_shape {{.*}} into tensor<32x64x2xbf16>
// REWRITE: arith.truncf %{{.*}} : f32 to bf16
// REWRITE: } -> tensor<3x64x16x2xbf16>
// REWRITE: linalg.fill {tc.amx_init = "__tc_lp_0"} {{.*}} -> tensor<32x3x16xf32>
// REWRITE: linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<32x64x2xbf16>, tensor<3x64x16x2xbf16>) outs(%{{.*}} : tensor<32x3x16xf32>)
// REWRITE-SAME: tc.amx
// REWRITE: arith.extf
// REWRITE: tensor.collapse_shape {{.*}} into tensor<32x48xf32>
// REWRITE: return
// REWRITE-NOT: linalg.matmul

// Lowered, the contraction is a call to the AMX kernel: the fill is gone, the first K
// chunk of each register block starts from zero tiles, and the blocks are AMX tile ops.
// AMX-LABEL: llvm.func @_mlir_ciface_mm(
// AMX: llvm.call @__tc_amx_0(
// AMX-LABEL: llvm.func @__tc_amx_0_b0(
// AMX: tilezero
// AMX: tileloadd64
// AMX: tdpbf16ps
// AMX: tilestored64
func.func @mm(%a: tensor<32x128xf32>, %b: tensor<128x48xf32>) -> tensor<32x48xf32> {
  %cst = arith.constant 0.000000e+00 : f32
  %e = tensor.empty() : tensor<32x48xf32>
  %z = linalg.fill ins(%cst : f32) outs(%e : tensor<32x48xf32>) -> tensor<32x48xf32>
  %r = linalg.matmul ins(%a, %b : tensor<32x128xf32>, tensor<128x48xf32>) outs(%z : tensor<32x48xf32>) -> tensor<32x48xf32>
  return %r : tensor<32x48xf32>
}
