// RUN: tilecraft-opt %s -p panel-weights | filecheck %s

// A bound matmul weight of 1 MB or more ([512, 512] f32), read by a matmul of more than
// one row on a zero fill, is stored as column panels [512/32, 512, 32] (the argument's
// type changes with it) and read by a batched matmul that broadcasts A over the panels.
// The bias and ReLU after it read the panels' [J, M, P] result transposed, at (m, j, p),
// and write [M, J, P], which a reshape makes [M, N] again: no transpose of its own.
// %w2 (128 KB) keeps its layout.
// CHECK-DAG: #[[MA:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d1, d3)>
// CHECK-DAG: #[[MB:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>
// CHECK-LABEL: func.func @layer(
// CHECK-SAME: %[[W1:[^:]+]]: tensor<16x512x32xf32>, %[[B:[^:]+]]: tensor<512xf32>, %[[W2:[^:]+]]: tensor<512x64xf32>, %[[X:[^:]+]]: tensor<8x512xf32>
// CHECK: %[[F:[^ ]+]] = linalg.fill {{.*}} -> tensor<16x8x32xf32>
// CHECK: %[[T:[^ ]+]] = linalg.batch_matmul indexing_maps = [#[[MA]], #[[MB]], #{{[a-z0-9]+}}] ins(%[[X]], %[[W1]] : tensor<8x512xf32>, tensor<16x512x32xf32>) outs(%[[F]] : tensor<16x8x32xf32>)
// CHECK: %[[BIAS:[^ ]+]] = tensor.expand_shape %[[B]] {{\[\[}}0, 1]] output_shape [16, 32] : tensor<512xf32> into tensor<16x32xf32>
// CHECK: %[[R:[^ ]+]] = linalg.generic {{.*}} ins(%[[T]], %[[BIAS]] : tensor<16x8x32xf32>, tensor<16x32xf32>) outs(%{{.*}} : tensor<8x16x32xf32>)
// CHECK: arith.addf
// CHECK: arith.maximumf
// CHECK: %[[C:[^ ]+]] = tensor.collapse_shape %[[R]] {{\[\[}}0], [1, 2]] : tensor<8x16x32xf32> into tensor<8x512xf32>
// CHECK: linalg.matmul ins(%[[C]], %[[W2]] : tensor<8x512xf32>, tensor<512x64xf32>)
func.func @layer(%w1: tensor<512x512xf32>, %b: tensor<512xf32>, %w2: tensor<512x64xf32>, %x: tensor<8x512xf32>)
    -> tensor<8x64xf32> attributes {tc.bound_args = 3 : i64} {
  %zero = arith.constant 0.0 : f32
  %e1 = tensor.empty() : tensor<8x512xf32>
  %f1 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<8x512xf32>) -> tensor<8x512xf32>
  %a = linalg.matmul ins(%x, %w1 : tensor<8x512xf32>, tensor<512x512xf32>) outs(%f1 : tensor<8x512xf32>) -> tensor<8x512xf32>
  %e2 = tensor.empty() : tensor<8x512xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%a, %b : tensor<8x512xf32>, tensor<512xf32>) outs(%e2 : tensor<8x512xf32>) {
  ^bb0(%v: f32, %bias: f32, %o: f32):
    %s = arith.addf %v, %bias : f32
    %m = arith.maximumf %s, %zero : f32
    linalg.yield %m : f32
  } -> tensor<8x512xf32>
  %e3 = tensor.empty() : tensor<8x64xf32>
  %f3 = linalg.fill ins(%zero : f32) outs(%e3 : tensor<8x64xf32>) -> tensor<8x64xf32>
  %c = linalg.matmul ins(%r, %w2 : tensor<8x512xf32>, tensor<512x64xf32>) outs(%f3 : tensor<8x64xf32>) -> tensor<8x64xf32>
  return %c : tensor<8x64xf32>
}
