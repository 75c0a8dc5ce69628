// RUN: tilecraft-opt %s -p drop-empty-ops | filecheck %s

// An elementwise op on a [0, 8] tensor and a matmul whose K is 0 iterate over nothing:
// the first yields its (empty) init, the second its zero fill; neither is left to tile.
// CHECK-LABEL: func.func @empty(
// CHECK-NOT: linalg.generic
// CHECK-NOT: linalg.matmul
// CHECK: %[[Z:[^ ]+]] = linalg.fill
// CHECK: return %{{[^,]+}}, %[[Z]] : tensor<0x8xf32>, tensor<4x8xf32>
#id = affine_map<(i, j) -> (i, j)>
func.func @empty(%x: tensor<0x8xf32>, %a: tensor<4x0xf32>, %b: tensor<0x8xf32>) -> (tensor<0x8xf32>, tensor<4x8xf32>) {
  %e = tensor.empty() : tensor<0x8xf32>
  %y = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
    ins(%x : tensor<0x8xf32>) outs(%e : tensor<0x8xf32>) {
  ^bb0(%v: f32, %o: f32):
    %m = arith.addf %v, %v : f32
    linalg.yield %m : f32
  } -> tensor<0x8xf32>
  %zero = arith.constant 0.0 : f32
  %e2 = tensor.empty() : tensor<4x8xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e2 : tensor<4x8xf32>) -> tensor<4x8xf32>
  %c = linalg.matmul ins(%a, %b : tensor<4x0xf32>, tensor<0x8xf32>) outs(%f : tensor<4x8xf32>) -> tensor<4x8xf32>
  return %y, %c : tensor<0x8xf32>, tensor<4x8xf32>
}
