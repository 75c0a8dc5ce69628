// RUN: tilecraft-opt %s -p sink-transposes | filecheck %s

// Between two convolutions rewritten as GEMMs, the first one's NHWC result is transposed
// to NCHW, goes through its epilogue (a per-channel bias and a ReLU) and a zero pad, and
// is transposed back to NHWC for the second one. The NHWC -> NCHW transpose is sunk below
// the elementwise ops (restated on NHWC: the bias read through the permuted map (n, h, w,
// c) -> (c)) and cancelled against its inverse; the pad is restated on NHWC (the H and W
// dims padded, now dims 1 and 2). No transpose is left.
// CHECK-DAG: #[[ID:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>
// CHECK-DAG: #[[CH:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d3)>
// CHECK-LABEL: func.func @epilogue_between_convs(
// CHECK-SAME: %[[Y:[^:]+]]: tensor<1x8x8x16xf32>, %[[B:[^:]+]]: tensor<16xf32>
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[CH]], #[[ID]]]
// CHECK-SAME: ins(%[[Y]], %[[B]] : tensor<1x8x8x16xf32>, tensor<16xf32>) outs(%{{.*}} : tensor<1x8x8x16xf32>)
// CHECK: arith.addf
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[ID]]]
// CHECK: arith.maximumf
// CHECK: tensor.pad %{{.*}} low[0, 1, 1, 0] high[0, 1, 1, 0]
// CHECK: tensor<1x8x8x16xf32> to tensor<1x10x10x16xf32>
// CHECK-NOT: linalg.generic
// CHECK: return %{{.*}} : tensor<1x10x10x16xf32>
#id = affine_map<(n, c, h, w) -> (n, c, h, w)>
#ch = affine_map<(n, c, h, w) -> (c)>
#to_nchw = affine_map<(n, c, h, w) -> (n, h, w, c)>
#to_nhwc = affine_map<(n, h, w, c) -> (n, c, h, w)>
func.func @epilogue_between_convs(%y: tensor<1x8x8x16xf32>, %b: tensor<16xf32>) -> tensor<1x10x10x16xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1x16x8x8xf32>
  %t = linalg.generic {indexing_maps = [#to_nchw, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%y : tensor<1x8x8x16xf32>) outs(%e : tensor<1x16x8x8xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<1x16x8x8xf32>
  %biased = linalg.generic {indexing_maps = [#id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%t, %b : tensor<1x16x8x8xf32>, tensor<16xf32>) outs(%e : tensor<1x16x8x8xf32>) {
  ^bb0(%in: f32, %bias: f32, %out: f32):
    %s = arith.addf %in, %bias : f32
    linalg.yield %s : f32
  } -> tensor<1x16x8x8xf32>
  %relu = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%biased : tensor<1x16x8x8xf32>) outs(%e : tensor<1x16x8x8xf32>) {
  ^bb0(%in: f32, %out: f32):
    %r = arith.maximumf %in, %zero : f32
    linalg.yield %r : f32
  } -> tensor<1x16x8x8xf32>
  %p = tensor.pad %relu low[0, 0, 1, 1] high[0, 0, 1, 1] {
  ^bb0(%i0: index, %i1: index, %i2: index, %i3: index):
    tensor.yield %zero : f32
  } : tensor<1x16x8x8xf32> to tensor<1x16x10x10xf32>
  %e2 = tensor.empty() : tensor<1x10x10x16xf32>
  %u = linalg.generic {indexing_maps = [#to_nhwc, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%p : tensor<1x16x10x10xf32>) outs(%e2 : tensor<1x10x10x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<1x10x10x16xf32>
  return %u : tensor<1x10x10x16xf32>
}
