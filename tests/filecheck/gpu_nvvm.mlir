// RUN: tilecraft-opt %s -p "gpu-tiled,gpu-launch,gpu-nvvm{arch=sm_80}" | filecheck %s
//
// gpu-nvvm: the kernel module carries its NVVM target and is in the LLVM dialect: an
// nvvm.kernel function over expanded memref descriptors, thread and block ids as PTX
// special registers, the rank-1 updates as 4-wide vector arithmetic.
// CHECK: gpu.module @forward_kernel [#nvvm.target<chip = "sm_80", features = "+ptx84">]
// CHECK: llvm.func @forward_kernel({{.*}}) attributes {{{.*}}nvvm.kernel
// CHECK-DAG: nvvm.read.ptx.sreg.ctaid.x
// CHECK-DAG: nvvm.read.ptx.sreg.tid.x
// CHECK: llvm.fmul {{.*}} : vector<4xf32>
// CHECK-NOT: gpu.thread_id
// CHECK-NOT: scf.for

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
