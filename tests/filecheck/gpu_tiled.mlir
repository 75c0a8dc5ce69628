// RUN: tilecraft-opt %s -p gpu-tiled | filecheck %s
//
// gpu-tiled: the kernel (matmul + its zero fill + the bias/ReLU epilogue, one tc.gpu_kernels
// group) is tiled by its tc.gpu_schedule: 32x64 output tiles over thread blocks (a 2x4
// grid, x across the columns), 4x4 tiles over threads (16x8), the matmul and the fill fused
// into each thread tile, and each thread's 4x4 accumulator a vector carried through the
// k loop (a rank-1 update per step), not memory.
// CHECK-LABEL: func.func @forward
// CHECK: scf.forall ({{.*}}) in (2, 4) shared_outs
// CHECK: scf.forall ({{.*}}) in (8, 16) shared_outs
// CHECK: scf.for {{.*}} to %c128 step %c1 iter_args({{.*}}) -> (vector<4x4xf32>)
// CHECK: vector.transfer_read {{.*}} vector<4x1xf32>
// CHECK: vector.transfer_read {{.*}} vector<4xf32>
// CHECK: arith.mulf {{.*}} : vector<4x4xf32>
// CHECK: linalg.generic {{.*}} ins({{.*}} : tensor<4x4xf32>, tensor<4xf32>)
// CHECK: mapping = [#gpu.thread<y>, #gpu.thread<x>]
// CHECK: mapping = [#gpu.block<y>, #gpu.block<x>], tc.sink = 2
// CHECK-NOT: linalg.matmul {{.*}} tensor<64x128xf32>

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d1)>
module attributes {tc.gpu_kernels = ["{\22members\22: [1, 0], \22sink\22: 2, \22tiles\22: []}"]} {
  func.func @forward(%a: tensor<64x128xf32>, %b: tensor<128x256xf32>, %bias: tensor<256xf32>) -> tensor<64x256xf32> {
    %cst = arith.constant 0.000000e+00 : f32
    %out = tensor.empty() : tensor<64x256xf32>
    %acc = tensor.empty() : tensor<64x256xf32>
    %z = linalg.fill {tc.op_id = 0 : i64} ins(%cst : f32) outs(%acc : tensor<64x256xf32>) -> tensor<64x256xf32>
    %m = linalg.matmul {tc.op_id = 1 : i64} ins(%a, %b : tensor<64x128xf32>, tensor<128x256xf32>) outs(%z : tensor<64x256xf32>) -> tensor<64x256xf32>
    %r = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]} ins(%m, %bias : tensor<64x256xf32>, tensor<256xf32>) outs(%out : tensor<64x256xf32>) attrs = {tc.gpu_schedule = "{\22block\22: [32, 64], \22thread\22: [4, 4]}", tc.op_id = 2 : i64} {
    ^bb0(%x: f32, %y: f32, %o: f32):
      %s = arith.addf %x, %y : f32
      %t = arith.maximumf %s, %cst : f32
      linalg.yield %t : f32
    } -> tensor<64x256xf32>
    return %r : tensor<64x256xf32>
  }
}
