// RUN: tilecraft-opt %s -p expand-erf | filecheck %s

// math.erf has no LLVM lowering that vectorizes; it is replaced by a rational function of
// the clamped argument: fused multiply-adds and one division, no exponential.
// CHECK-LABEL: func.func @gelu_erf
// CHECK-NOT: math.erf
// CHECK: arith.maximumf
// CHECK: arith.minimumf
// CHECK: math.fma
// CHECK-NOT: math.exp
// CHECK: arith.divf
func.func @gelu_erf(%x: tensor<8x16xf32>) -> tensor<8x16xf32> {
  %e = tensor.empty() : tensor<8x16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]} ins(%x : tensor<8x16xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    %y = math.erf %in : f32
    linalg.yield %y : f32
  } -> tensor<8x16xf32>
  return %r : tensor<8x16xf32>
}
