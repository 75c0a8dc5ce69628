// RUN: tilecraft-opt %s -p cpu-tiled | filecheck %s

// The default matmul schedule tiles 64x128x128 for the caches, then 8x32x1 registers,
// and vectorizes the register tile (a multiply and a reduction over k on tensors; cpu-vector
// turns them into a contraction).
// CHECK-LABEL: func.func @mm
// CHECK: scf.for {{.*}} step %c64
// CHECK: scf.for {{.*}} step %c128
// CHECK: scf.for {{.*}} step %c128
// CHECK: scf.for {{.*}} step %c8
// CHECK: scf.for {{.*}} step %c32
// CHECK: scf.for {{.*}} step %c1
// CHECK: vector.multi_reduction <add>, {{.*}} [2] : vector<8x32x1xf32> to vector<8x32xf32>
// CHECK-NOT: linalg.matmul
func.func @mm(%a: tensor<256x256xf32>, %b: tensor<256x256xf32>) -> tensor<256x256xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<256x256xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<256x256xf32>) -> tensor<256x256xf32>
  %r = linalg.matmul ins(%a, %b : tensor<256x256xf32>, tensor<256x256xf32>) outs(%f : tensor<256x256xf32>) -> tensor<256x256xf32>
  return %r : tensor<256x256xf32>
}
