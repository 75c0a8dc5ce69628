// RUN: tilecraft-opt %s -p gpu-tiled,gpu-launch | filecheck %s
//
// gpu-launch: bufferized, the block/thread foralls become one gpu.launch (grid 4x2, 16x8
// threads), outlined into a gpu.module of its own; the host function keeps only the output
// allocation and the launch. A thread's accumulator tile is on its stack (alloca), never a
// device-heap allocation.
// CHECK-LABEL: func.func @forward
// CHECK: memref.alloc() {{.*}} : memref<64x256xf32>
// CHECK-NEXT: gpu.launch_func @forward_kernel::@forward_kernel blocks in (%c4, %c2, %c1) threads in (%c16, %c8, %c1)
// CHECK-NEXT: return
// CHECK: gpu.module @forward_kernel
// CHECK: gpu.func @forward_kernel({{.*}}) kernel
// CHECK-DAG: gpu.block_id x
// CHECK-DAG: gpu.thread_id x
// CHECK: memref.alloca() : memref<4x4xf32>
// CHECK-NOT: scf.forall
// CHECK-NOT: memref.alloc()

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
