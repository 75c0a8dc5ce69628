// RUN: tilecraft-opt %s -p panel-epilogues | filecheck %s

// A panelled matmul's [J, M, P] result reaches [M, N] through its transpose and a reshape
// (`panel-weights`); an elementwise op that reshapes had kept apart from it (a
// convolution's NHWC batch norm, once `sink-expand-shapes` restated it on [M, N]) now
// reads the panels through the transpose, at (m, j, p), and writes [M, J, P]: the
// transpose is gone. Its per-channel scale [N] is read as [J, P].
// CHECK-LABEL: func.func @epilogue(
// CHECK-SAME: %[[T:[^:]+]]: tensor<2x8x32xf32>, %[[S:[^:]+]]: tensor<64xf32>
// CHECK-NOT: linalg.yield %{{[a-z0-9_]+}} : f32
// CHECK: %[[S2:[^ ]+]] = tensor.expand_shape %[[S]] {{\[\[}}0, 1]] output_shape [2, 32] : tensor<64xf32> into tensor<2x32xf32>
// CHECK: %[[R:[^ ]+]] = linalg.generic {{.*}} ins(%[[T]], %[[S2]] : tensor<2x8x32xf32>, tensor<2x32xf32>) outs(%{{.*}} : tensor<8x2x32xf32>)
// CHECK: arith.mulf
// CHECK: tensor.collapse_shape %[[R]] {{\[\[}}0], [1, 2]] : tensor<8x2x32xf32> into tensor<8x64xf32>
func.func @epilogue(%t: tensor<2x8x32xf32>, %s: tensor<64xf32>) -> tensor<8x64xf32> {
  %e = tensor.empty() : tensor<8x2x32xf32>
  %c3 = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d1, d0, d2)>],
                        iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%t : tensor<2x8x32xf32>) outs(%e : tensor<8x2x32xf32>) {
  ^bb0(%x: f32, %y: f32):
    linalg.yield %x : f32
  } -> tensor<8x2x32xf32>
  %c = tensor.collapse_shape %c3 [[0], [1, 2]] : tensor<8x2x32xf32> into tensor<8x64xf32>
  %e2 = tensor.empty() : tensor<8x64xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%c, %s : tensor<8x64xf32>, tensor<64xf32>) outs(%e2 : tensor<8x64xf32>) {
  ^bb0(%v: f32, %sc: f32, %o: f32):
    %m = arith.mulf %v, %sc : f32
    linalg.yield %m : f32
  } -> tensor<8x64xf32>
  return %r : tensor<8x64xf32>
}
