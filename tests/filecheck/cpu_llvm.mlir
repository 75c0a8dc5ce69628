// RUN: tilecraft-opt %s -p cpu-llvm | filecheck %s

// The cpu-llvm stage alone on
// vector-stage IR. The returned buffer becomes an out-parameter (its allocation is the
// caller's: the function takes a second memref descriptor and returns nothing), a
// temporary buffer is freed when the function ends (to the module's own pool,
// `backends/cpu/pool.py`, which calls malloc only on a miss and free only when full or
// unloaded), the loop becomes branches, the vector loads, multiply and stores become LLVM
// ops on vector<16xf32>, and the function is its own C interface: it takes both memrefs
// by pointer and loads their descriptors first (`lowering.inline_entries`: no call with
// every descriptor field as an argument is left).
// CHECK-DAG: llvm.func @free(!llvm.ptr)
// CHECK-DAG: llvm.func @malloc(i64) -> !llvm.ptr
// CHECK-NOT: llvm.func @scale(
// CHECK-LABEL: llvm.func @_mlir_ciface_scale(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// CHECK-SAME: attributes {llvm.emit_c_interface}
// CHECK: llvm.load %arg0 : !llvm.ptr -> !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)>
// CHECK: llvm.load %arg1 : !llvm.ptr -> !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)>
// CHECK: %[[TMP:[^ ]+]] = llvm.call @__tc_pool_alloc(
// CHECK-NOT: llvm.call @__tc_pool_alloc
// CHECK: llvm.cond_br
// CHECK: llvm.load {{.*}} : !llvm.ptr -> vector<16xf32>
// CHECK: llvm.fmul {{.*}} : vector<16xf32>
// CHECK: llvm.store {{.*}} : vector<16xf32>, !llvm.ptr
// CHECK: llvm.br
// CHECK: llvm.call @__tc_pool_free(%[[TMP]])
// CHECK-NEXT: llvm.return{{$}}
// CHECK-NOT: llvm.call @scale(
// CHECK: llvm.mlir.global_dtors dtors = [@__tc_pool_release]
// CHECK: llvm.func hidden @__tc_pool_alloc(
// CHECK: llvm.call @malloc(
func.func @scale(%x: memref<4x16xf32>) -> memref<4x16xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  %two = arith.constant dense<2.0> : vector<16xf32>
  %out = memref.alloc() {alignment = 64 : i64} : memref<4x16xf32>
  %tmp = memref.alloc() {alignment = 64 : i64} : memref<16xf32>
  scf.for %i = %c0 to %c4 step %c1 {
    %v = vector.load %x[%i, %c0] : memref<4x16xf32>, vector<16xf32>
    %y = arith.mulf %v, %two : vector<16xf32>
    vector.store %y, %tmp[%c0] : memref<16xf32>, vector<16xf32>
    %z = vector.load %tmp[%c0] : memref<16xf32>, vector<16xf32>
    vector.store %z, %out[%i, %c0] : memref<4x16xf32>, vector<16xf32>
  }
  return %out : memref<4x16xf32>
}
