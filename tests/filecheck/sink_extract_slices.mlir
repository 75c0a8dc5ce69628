// RUN: tilecraft-opt %s -p sink-extract-slices | filecheck %s

// A tap chain (conv-im2col) computes its output rows with the input's row pitch: 27
// columns, of which a slice keeps the first 25. Its epilogue (a per-channel bias and a
// ReLU) read that slice, so it could not be fused onto the chain's accumulator. The
// epilogue is restated on the whole [1, 4, 27, 16] accumulator (8% more work) and the
// slice moves below it, to the end.
// CHECK-LABEL: func.func @chain_epilogue(
// CHECK-SAME: %[[ACC:[^:]+]]: tensor<108x16xf32>, %[[B:[^:]+]]: tensor<16xf32>
// CHECK: %[[R:[^ ]+]] = tensor.expand_shape %[[ACC]] {{.*}} into tensor<1x4x27x16xf32>
// CHECK-NOT: tensor.extract_slice
// CHECK: linalg.generic {{.*}} ins(%[[R]], %[[B]] : tensor<1x4x27x16xf32>, tensor<16xf32>) outs(%{{.*}} : tensor<1x4x27x16xf32>)
// CHECK: arith.addf
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<1x4x27x16xf32>) outs(%{{.*}} : tensor<1x4x27x16xf32>)
// CHECK: arith.maximumf
// CHECK: %[[OUT:[^ ]+]] = tensor.extract_slice %{{.*}}[0, 0, 0, 0] [1, 4, 25, 16] [1, 1, 1, 1] : tensor<1x4x27x16xf32> to tensor<1x4x25x16xf32>
// CHECK: return %[[OUT]]
#id = affine_map<(n, h, w, c) -> (n, h, w, c)>
#ch = affine_map<(n, h, w, c) -> (c)>
func.func @chain_epilogue(%acc: tensor<108x16xf32>, %b: tensor<16xf32>) -> tensor<1x4x25x16xf32> {
  %zero = arith.constant 0.0 : f32
  %rows = tensor.expand_shape %acc [[0, 1, 2], [3]] output_shape [1, 4, 27, 16] : tensor<108x16xf32> into tensor<1x4x27x16xf32>
  %out = tensor.extract_slice %rows[0, 0, 0, 0] [1, 4, 25, 16] [1, 1, 1, 1] : tensor<1x4x27x16xf32> to tensor<1x4x25x16xf32>
  %e = tensor.empty() : tensor<1x4x25x16xf32>
  %biased = linalg.generic {indexing_maps = [#id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%out, %b : tensor<1x4x25x16xf32>, tensor<16xf32>) outs(%e : tensor<1x4x25x16xf32>) {
  ^bb0(%in: f32, %bias: f32, %o: f32):
    %s = arith.addf %in, %bias : f32
    linalg.yield %s : f32
  } -> tensor<1x4x25x16xf32>
  %relu = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%biased : tensor<1x4x25x16xf32>) outs(%e : tensor<1x4x25x16xf32>) {
  ^bb0(%in: f32, %o: f32):
    %r = arith.maximumf %in, %zero : f32
    linalg.yield %r : f32
  } -> tensor<1x4x25x16xf32>
  return %relu : tensor<1x4x25x16xf32>
}
