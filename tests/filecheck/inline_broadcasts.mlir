// RUN: tilecraft-opt %s -p inline-broadcasts | filecheck %s

// A bias materialized over [C, H, W] (a generic that only copies its [C] input, and a
// linalg.broadcast alike) pins the loops of the add that reads it. The add reads the bias
// itself instead, through the composed map (c, h, w) -> (c), and the broadcasts, now
// unread, are gone.
// CHECK-DAG: #[[ID:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: #[[CH:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0)>
// CHECK-DAG: #[[ROW:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d1, d2)>
// CHECK-LABEL: func.func @bias_add(
// CHECK-SAME: %[[X:[^:]+]]: tensor<8x4x16xf32>, %[[B:[^:]+]]: tensor<8xf32>, %[[R:[^:]+]]: tensor<4x16xf32>
// CHECK-NOT: linalg.broadcast
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[CH]], #[[ID]]]
// CHECK-SAME: ins(%[[X]], %[[B]] : tensor<8x4x16xf32>, tensor<8xf32>)
// CHECK: arith.addf
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[ROW]], #[[ID]]]
// CHECK-SAME: ins(%{{.*}}, %[[R]] : tensor<8x4x16xf32>, tensor<4x16xf32>)
// CHECK: arith.mulf
// CHECK-NOT: linalg.broadcast
// CHECK: return
#id = affine_map<(c, h, w) -> (c, h, w)>
#ch = affine_map<(c, h, w) -> (c)>
func.func @bias_add(%x: tensor<8x4x16xf32>, %b: tensor<8xf32>, %r: tensor<4x16xf32>) -> tensor<8x4x16xf32> {
  %e = tensor.empty() : tensor<8x4x16xf32>
  %bb = linalg.generic {indexing_maps = [#ch, #id], iterator_types = ["parallel", "parallel", "parallel"]}
    ins(%b : tensor<8xf32>) outs(%e : tensor<8x4x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<8x4x16xf32>
  %y = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel", "parallel"]}
    ins(%x, %bb : tensor<8x4x16xf32>, tensor<8x4x16xf32>) outs(%e : tensor<8x4x16xf32>) {
  ^bb0(%a: f32, %c: f32, %out: f32):
    %s = arith.addf %a, %c : f32
    linalg.yield %s : f32
  } -> tensor<8x4x16xf32>
  %rb = linalg.broadcast ins(%r : tensor<4x16xf32>) outs(%e : tensor<8x4x16xf32>) dimensions = [0]
  %z = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel", "parallel"]}
    ins(%y, %rb : tensor<8x4x16xf32>, tensor<8x4x16xf32>) outs(%e : tensor<8x4x16xf32>) {
  ^bb0(%a: f32, %c: f32, %out: f32):
    %p = arith.mulf %a, %c : f32
    linalg.yield %p : f32
  } -> tensor<8x4x16xf32>
  return %z : tensor<8x4x16xf32>
}
