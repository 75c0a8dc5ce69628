// RUN: tilecraft-opt %s -p fuse | filecheck %s

// fuse{strategy=decided} applies the groups the module carries (tc.fusion: op ids in walk
// order, 0 fill, 1 matmul, 2 bias add, 3 ReLU) and moves them to tc.fused_groups. This
// one: the ReLU (the sink) is tiled 16x32 for the caches and the add, matmul and zero fill
// are fused into each tile; the tile is tiled again into 8x32 register tiles, into which
// the elementwise members (not the matmul) are fused a second time and marked tc.fused.
// CHECK: module attributes {tc.fused_groups = [{{.*}}sink{{.*}}: 3, {{.*}}tiles{{.*}}: [16, 32]
// CHECK-NOT: tc.fusion =
// CHECK-LABEL: func.func @linear_relu
// CHECK: scf.for {{.*}} step %c16
// CHECK: scf.for {{.*}} step %c32
// CHECK: linalg.fill {tc.op_id = 0 : i64} {{.*}} -> tensor<16x32xf32>
// CHECK: linalg.matmul {tc.op_id = 1 : i64} ins({{.*}} : tensor<16x128xf32>, tensor<128x32xf32>) outs({{.*}} : tensor<16x32xf32>)
// CHECK: scf.for {{.*}} step %c8
// CHECK: linalg.generic {{.*}} outs(%{{.*}} : tensor<8x32xf32>) attrs = {tc.fused, tc.op_id = 2 : i64}
// CHECK: arith.addf
// CHECK: linalg.generic {{.*}} outs(%{{.*}} : tensor<8x32xf32>) attrs = {tc.fused, tc.op_id = 3 : i64}
// CHECK: arith.maximumf
// CHECK-NOT: linalg.{{(fill|matmul|generic)}}
// CHECK: return
module attributes {tc.fusion = ["{\"sink\": 3, \"members\": [2, 1, 0], \"tiles\": [16, 32], \"inner\": [8, 32], \"registers\": false}"]} {
  func.func @linear_relu(%x: tensor<64x128xf32>, %w: tensor<128x64xf32>, %b: tensor<64xf32>) -> tensor<64x64xf32> {
    %zero = arith.constant 0.0 : f32
    %e = tensor.empty() : tensor<64x64xf32>
    %f = linalg.fill ins(%zero : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
    %m = linalg.matmul ins(%x, %w : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
    %a = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (j)>, affine_map<(i, j) -> (i, j)>],
                         iterator_types = ["parallel", "parallel"]}
      ins(%m, %b : tensor<64x64xf32>, tensor<64xf32>) outs(%e : tensor<64x64xf32>) {
    ^bb0(%p: f32, %q: f32, %o: f32):
      %r = arith.addf %p, %q : f32
      linalg.yield %r : f32
    } -> tensor<64x64xf32>
    %y = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                         iterator_types = ["parallel", "parallel"]}
      ins(%a : tensor<64x64xf32>) outs(%e : tensor<64x64xf32>) {
    ^bb0(%p: f32, %o: f32):
      %r = arith.maximumf %p, %zero : f32
      linalg.yield %r : f32
    } -> tensor<64x64xf32>
    return %y : tensor<64x64xf32>
  }
}
