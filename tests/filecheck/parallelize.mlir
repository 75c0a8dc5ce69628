// RUN: tilecraft-opt %s -p parallelize | filecheck %s
// RUN: tilecraft-opt %s -p parallelize,fuse,cpu-lower | filecheck --check-prefix=OMP %s
//
// parallelize: the kernel (matmul + its zero fill + the bias/ReLU epilogue) split into 2
// chunks along n (a tc.parallel record): an scf.forall of 2 whose iterations each compute
// 128 columns, the members and the fill fused into it; the record moves to
// tc.parallelized, and the group's tile along n (128, the whole chunk) is dropped from its
// tc.fusion record (its register tiles stay). Lowered, the forall is an OpenMP parallel
// loop on 2 threads.
// CHECK: tc.fusion = [{{.*}}\22tiles\22: [0, 0]}"], tc.parallelized = [
// CHECK: scf.forall (%{{.*}}) in (2) shared_outs
// CHECK: tensor.extract_slice %arg1[0, %{{.*}}] [128, 128]
// CHECK: linalg.fill {tc.op_id = 0 : i64} {{.*}} -> tensor<64x128xf32>
// CHECK: linalg.matmul {tc.op_id = 1 : i64} {{.*}} -> tensor<64x128xf32>
// CHECK: linalg.generic {{.*}} {tc.op_id = 2 : i64}
// CHECK: tensor.parallel_insert_slice {{.*}} [64, 128] [1, 1] : tensor<64x128xf32> into tensor<64x256xf32>
// OMP: omp.parallel num_threads
// OMP: omp.wsloop

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d1)>
module attributes {tc.fusion = ["{\22inner\22: [8, 32], \22members\22: [1, 0], \22registers\22: true, \22sink\22: 2, \22tiles\22: [0, 128]}"], tc.parallel = ["{\22chunks\22: 2, \22loop\22: 1, \22members\22: [1, 0], \22sink\22: 2}"]} {
  func.func @forward(%a: tensor<64x128xf32>, %b: tensor<128x256xf32>, %bias: tensor<256xf32>) -> tensor<64x256xf32> {
    %cst = arith.constant 0.000000e+00 : f32
    %out = tensor.empty() : tensor<64x256xf32>
    %acc = tensor.empty() : tensor<64x256xf32>
    %z = linalg.fill {tc.op_id = 0 : i64} ins(%cst : f32) outs(%acc : tensor<64x256xf32>) -> tensor<64x256xf32>
    %m = linalg.matmul {tc.op_id = 1 : i64} ins(%a, %b : tensor<64x128xf32>, tensor<128x256xf32>) outs(%z : tensor<64x256xf32>) -> tensor<64x256xf32>
    %r = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]} ins(%m, %bias : tensor<64x256xf32>, tensor<256xf32>) outs(%out : tensor<64x256xf32>) attrs = {tc.op_id = 2 : i64} {
    ^bb0(%x: f32, %y: f32, %o: f32):
      %s = arith.addf %x, %y : f32
      %t = arith.maximumf %s, %cst : f32
      linalg.yield %t : f32
    } -> tensor<64x256xf32>
    return %r : tensor<64x256xf32>
  }
}
