// RUN: tilecraft-opt %s -p drop-unit-reads | filecheck %s

// A batch norm restated over a pointwise GEMM's [C, H*W] result reads its [C, 1, 1]
// per-channel scale through (c, p) -> (c, 0, 0). A map with constants is not a projected
// permutation, and the vectorizer leaves such an op scalar. The scale is collapsed to [C]
// and read through (c, p) -> (c) instead.
// CHECK-DAG: #[[ID:map[0-9]*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: #[[CH:map[0-9]*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-LABEL: func.func @scale_rows(
// CHECK-SAME: %[[X:[^:]+]]: tensor<16x64xf32>, %[[S:[^:]+]]: tensor<16x1x1xf32>
// CHECK: %[[S1:[^ ]+]] = tensor.collapse_shape %[[S]] {{\[}}[0, 1, 2]] : tensor<16x1x1xf32> into tensor<16xf32>
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[CH]], #[[ID]]]
// CHECK-SAME: ins(%[[X]], %[[S1]] : tensor<16x64xf32>, tensor<16xf32>)
// CHECK: arith.mulf
#id = affine_map<(c, p) -> (c, p)>
#unit = affine_map<(c, p) -> (c, 0, 0)>
func.func @scale_rows(%x: tensor<16x64xf32>, %s: tensor<16x1x1xf32>) -> tensor<16x64xf32> {
  %e = tensor.empty() : tensor<16x64xf32>
  %y = linalg.generic {indexing_maps = [#id, #unit, #id], iterator_types = ["parallel", "parallel"]}
    ins(%x, %s : tensor<16x64xf32>, tensor<16x1x1xf32>) outs(%e : tensor<16x64xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %m = arith.mulf %a, %b : f32
    linalg.yield %m : f32
  } -> tensor<16x64xf32>
  return %y : tensor<16x64xf32>
}
