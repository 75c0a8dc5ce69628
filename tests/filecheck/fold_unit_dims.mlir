// RUN: tilecraft-opt %s -p fold-unit-dims | filecheck %s

// A batch-1 transpose, bias add and row sum over [1, S, D]: the linalg.transpose is
// generalized first so that it loses its unit dim too, then every generic runs on [S, D]
// (the reduction into [S], not [1, S]: its result indexed by loops only, which fusion
// needs). Reshapes are left at the function's boundary only.
// CHECK-DAG: #[[T:map[0-9]*]] = affine_map<(d0, d1) -> (d1, d0)>
// CHECK-DAG: #[[ID:map[0-9]*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: #[[ROW:map[0-9]*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-LABEL: func.func @row_sums(
// CHECK: tensor.collapse_shape %{{.*}} {{\[}}[0, 1], [2]] : tensor<1x16x8xf32> into tensor<16x8xf32>
// CHECK-NOT: linalg.transpose
// CHECK: linalg.generic {indexing_maps = [#[[T]], #[[ID]]], iterator_types = ["parallel", "parallel"]} ins(%{{.*}} : tensor<16x8xf32>) outs(%{{.*}} : tensor<8x16xf32>)
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel"]} ins(%{{.*}}, %{{.*}} : tensor<8x16xf32>, tensor<16xf32>) outs(%{{.*}} : tensor<8x16xf32>)
// CHECK: arith.addf
// CHECK: linalg.fill {{.*}} -> tensor<8xf32>
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[ROW]]], iterator_types = ["parallel", "reduction"]} ins(%{{.*}} : tensor<8x16xf32>) outs(%{{.*}} : tensor<8xf32>)
// CHECK: tensor.expand_shape %{{.*}} : tensor<8xf32> into tensor<1x8xf32>
// CHECK: return
#id = affine_map<(b, s, d) -> (b, s, d)>
#col = affine_map<(b, s, d) -> (d)>
#row = affine_map<(b, s, d) -> (b, s)>
func.func @row_sums(%x: tensor<1x16x8xf32>, %bias: tensor<16xf32>) -> tensor<1x8xf32> {
  %zero = arith.constant 0.0 : f32
  %et = tensor.empty() : tensor<1x8x16xf32>
  %t = linalg.transpose ins(%x : tensor<1x16x8xf32>) outs(%et : tensor<1x8x16xf32>) permutation = [0, 2, 1]
  %y = linalg.generic {indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel", "parallel"]}
    ins(%t, %bias : tensor<1x8x16xf32>, tensor<16xf32>) outs(%et : tensor<1x8x16xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %s = arith.addf %a, %b : f32
    linalg.yield %s : f32
  } -> tensor<1x8x16xf32>
  %er = tensor.empty() : tensor<1x8xf32>
  %fr = linalg.fill ins(%zero : f32) outs(%er : tensor<1x8xf32>) -> tensor<1x8xf32>
  %r = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "parallel", "reduction"]}
    ins(%y : tensor<1x8x16xf32>) outs(%fr : tensor<1x8xf32>) {
  ^bb0(%a: f32, %acc: f32):
    %s = arith.addf %a, %acc : f32
    linalg.yield %s : f32
  } -> tensor<1x8xf32>
  return %r : tensor<1x8xf32>
}
