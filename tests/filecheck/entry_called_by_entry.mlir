// RUN: tilecraft-opt %s -p cpu-llvm | filecheck %s

// An entry function another one calls keeps its expanded-descriptor form beside its C
// interface (`lowering.inline_entries` turns only an entry nobody else calls into its own
// C interface): the caller's call still finds it.
// CHECK-LABEL: llvm.func @g(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: i64
// CHECK-LABEL: llvm.func @_mlir_ciface_g(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// CHECK: llvm.call @g(
// CHECK-NOT: llvm.func @h(
// CHECK-LABEL: llvm.func @_mlir_ciface_h(%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr)
// CHECK: llvm.call @g(
func.func @g(%x: memref<4xf32>, %y: memref<4xf32>) {
  %c0 = arith.constant 0 : index
  %v = memref.load %x[%c0] : memref<4xf32>
  memref.store %v, %y[%c0] : memref<4xf32>
  return
}
func.func @h(%x: memref<4xf32>, %y: memref<4xf32>) {
  call @g(%x, %y) : (memref<4xf32>, memref<4xf32>) -> ()
  return
}
