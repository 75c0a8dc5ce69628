// RUN: tilecraft-opt %s -p sink-expand-shapes | filecheck %s

// A pointwise convolution as a GEMM computes [F, H*W] = [16, 64] and reshapes it to
// [1, 16, 8, 8] for its batch norm and ReLU, a reshape no fusion group crosses. The
// elementwise ops are restated on the GEMM's own [16, 64] loops (the per-channel scale
// read through (c, p) -> (c)) and the expand_shape moves below them: the GEMM and its
// epilogue are one dataflow chain, and the reshape comes last.
// CHECK-DAG: #[[ID:map[0-9]*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: #[[CH:map[0-9]*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-LABEL: func.func @pointwise_bn_relu(
// CHECK-SAME: %[[W:[^:]+]]: tensor<16x32xf32>, %[[X:[^:]+]]: tensor<32x64xf32>, %[[S:[^:]+]]: tensor<16xf32>
// CHECK: %[[G:[^ ]+]] = linalg.matmul
// CHECK-NOT: tensor.expand_shape
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[CH]], #[[ID]]], iterator_types = ["parallel", "parallel"]}
// CHECK-SAME: ins(%[[G]], %[[S]] : tensor<16x64xf32>, tensor<16xf32>) outs(%{{.*}} : tensor<16x64xf32>)
// CHECK: arith.mulf
// CHECK-NOT: tensor.expand_shape
// CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[ID]]], iterator_types = ["parallel", "parallel"]}
// CHECK: arith.maximumf
// CHECK: %[[OUT:[^ ]+]] = tensor.expand_shape %{{.*}} {{\[}}[0, 1], [2, 3]] {{.*}} : tensor<16x64xf32> into tensor<1x16x8x8xf32>
// CHECK: return %[[OUT]]
#id = affine_map<(n, c, h, w) -> (n, c, h, w)>
#ch = affine_map<(n, c, h, w) -> (c)>
func.func @pointwise_bn_relu(%w: tensor<16x32xf32>, %x: tensor<32x64xf32>, %s: tensor<16xf32>) -> tensor<1x16x8x8xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x64xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<16x64xf32>) -> tensor<16x64xf32>
  %g = linalg.matmul ins(%w, %x : tensor<16x32xf32>, tensor<32x64xf32>) outs(%f : tensor<16x64xf32>) -> tensor<16x64xf32>
  %r = tensor.expand_shape %g [[0, 1], [2, 3]] output_shape [1, 16, 8, 8] : tensor<16x64xf32> into tensor<1x16x8x8xf32>
  %e4 = tensor.empty() : tensor<1x16x8x8xf32>
  %bn = linalg.generic {indexing_maps = [#id, #ch, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%r, %s : tensor<1x16x8x8xf32>, tensor<16xf32>) outs(%e4 : tensor<1x16x8x8xf32>) {
  ^bb0(%in: f32, %scale: f32, %o: f32):
    %m = arith.mulf %in, %scale : f32
    linalg.yield %m : f32
  } -> tensor<1x16x8x8xf32>
  %relu = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
    ins(%bn : tensor<1x16x8x8xf32>) outs(%e4 : tensor<1x16x8x8xf32>) {
  ^bb0(%in: f32, %o: f32):
    %y = arith.maximumf %in, %zero : f32
    linalg.yield %y : f32
  } -> tensor<1x16x8x8xf32>
  return %relu : tensor<1x16x8x8xf32>
}
