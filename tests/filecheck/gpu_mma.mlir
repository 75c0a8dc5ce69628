// RUN: tilecraft-opt %s -p gpu-tiled | filecheck --check-prefix=TILED %s
// RUN: tilecraft-opt %s -p gpu-tiled,gpu-launch | filecheck --check-prefix=LAUNCH %s
// RUN: tilecraft-opt %s -p "gpu-tiled,gpu-launch,gpu-nvvm{arch=sm_80}" | filecheck --check-prefix=NVVM %s
//
// Tensor cores: an f16 matmul into an f32 accumulator under an mma schedule (64x32 block
// tiles, 32x16 warp tiles: 2x2 warps). gpu-tiled: a forall over blocks around a forall
// over warps; each warp's k loop steps by 16 and carries its 2x2 m16n8 accumulator
// fragments in registers (one mixed-precision vector.contract each, 16x16 f16 by 16x8 f16
// into 16x8 f32). gpu-launch: 64x2 threads a block (x counts the warps' 32 lanes), the
// contractions as nvgpu.mma.sync; gpu-nvvm: nvvm.mma.sync m16n8k16, A row-major, B col.
// TILED: scf.forall (%{{.*}}, %{{.*}}) in (1, 2)
// TILED: scf.forall (%{{.*}}, %{{.*}}) in (2, 2)
// TILED: scf.for {{.*}} step %c16 iter_args({{.*}}) -> (vector<16x8xf32>, vector<16x8xf32>, vector<16x8xf32>, vector<16x8xf32>)
// TILED-COUNT-4: vector.contract {{.*}} : vector<16x16xf16>, vector<16x8xf16> into vector<16x8xf32>
// TILED: mapping = [#gpu.warp<y>, #gpu.warp<x>]
// TILED: mapping = [#gpu.block<y>, #gpu.block<x>]
// LAUNCH: gpu.launch_func @forward_kernel::@forward_kernel blocks in (%c2, %c1, %c1) threads in (%c64, %c2, %c1)
// LAUNCH: gpu.func @forward_kernel
// LAUNCH: scf.for
// LAUNCH-COUNT-4: nvgpu.mma.sync({{.*}}) {mmaShape = [16, 8, 16]} : (vector<4x2xf16>, vector<2x2xf16>, vector<2x2xf32>) -> vector<2x2xf32>
// LAUNCH-NOT: vector.contract
// NVVM: gpu.module @forward_kernel [#nvvm.target<chip = "sm_80"
// NVVM-COUNT-4: nvvm.mma.sync {{.*}} {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, shape = #nvvm.shape<m = 16, n = 8, k = 16>}

module attributes {tc.gpu_kernels = ["{\22members\22: [0], \22sink\22: 1, \22tiles\22: []}"]} {
  func.func @forward(%a: tensor<64x128xf16>, %b: tensor<128x64xf16>) -> tensor<64x64xf32> {
    %cst = arith.constant 0.000000e+00 : f32
    %acc = tensor.empty() : tensor<64x64xf32>
    %z = linalg.fill {tc.op_id = 0 : i64} ins(%cst : f32) outs(%acc : tensor<64x64xf32>) -> tensor<64x64xf32>
    %m = linalg.matmul {tc.gpu_schedule = "{\22block\22: [64, 32, 0], \22thread\22: [32, 16, 0], \22mma\22: true}", tc.op_id = 1 : i64} ins(%a, %b : tensor<64x128xf16>, tensor<128x64xf16>) outs(%z : tensor<64x64xf32>) -> tensor<64x64xf32>
    return %m : tensor<64x64xf32>
  }
}
