// RUN: tilecraft compile %s --target "gpu{arch=sm_80}" --emit ptx 2>/dev/null | filecheck %s
// RUN: tilecraft compile %s --target "gpu{arch=sm_90}" --emit llvm 2>/dev/null | filecheck --check-prefix=LLVM %s
//
// Past the MLIR stages: the kernel as PTX for sm_80 (through the LLVM inside triton), the
// k loop fully register-tiled: 8 loads and 16 FMAs a step; and as optimized LLVM IR.
// CHECK: .target sm_80
// CHECK: .visible .entry forward_kernel(
// CHECK-COUNT-16: fma.rn.f32
// CHECK: bra
// LLVM: define ptx_kernel void @forward_kernel(
// LLVM: call {{.*}} @llvm.nvvm.read.ptx.sreg.tid.x()

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
