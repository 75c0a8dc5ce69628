// RUN: tilecraft-opt %s -p cpu-vector | filecheck %s

// The cpu-vector stage alone on tiled IR: a vectorized ReLU tile on tensors whose result is
// zero-padded for a convolution. The pad is made in place: its whole buffer is filled
// (the fill vectorized in register tiles of at most 64 elements, `COPY_BUDGET`: a loop over
// the 2 planes, one 10-wide store per row) and the ReLU writes its result straight
// into the buffer's interior, a subview at offset (0, 1, 1), so no copy is left. The
// function is bufferized (memrefs at its boundary) and the vector ops are lowered to 1-D
// loads and stores.
// CHECK-LABEL: func.func @relu_pad(
// CHECK-SAME: %[[X:[^:]+]]: memref<2x4x8xf32>) -> memref<2x6x10xf32>
// CHECK: vector.load %[[X]][{{.*}}] : memref<2x4x8xf32>, vector<8xf32>
// CHECK: arith.maximumf {{.*}} : vector<2x4x8xf32>
// CHECK: %[[BUF:[^ ]+]] = memref.alloc() {{.*}} : memref<2x6x10xf32>
// CHECK-NOT: linalg.
// CHECK: scf.for
// CHECK: %[[PLANE:[^ ]+]] = memref.subview %[[BUF]][%{{.*}}, 0, 0] [1, 6, 10] [1, 1, 1]
// CHECK-COUNT-6: vector.store %{{.*}}, %[[PLANE]][{{.*}}] : memref<1x6x10xf32, strided<[60, 10, 1], offset: ?>>, vector<10xf32>
// CHECK: %[[IN:[^ ]+]] = memref.subview %[[BUF]][0, 1, 1] [2, 4, 8] [1, 1, 1]
// CHECK: vector.store %{{.*}}, %[[IN]][{{.*}}] : memref<2x4x8xf32, strided<[60, 10, 1], offset: 11>>, vector<8xf32>
// CHECK-NOT: copy
// CHECK: return %[[BUF]] : memref<2x6x10xf32>
// CHECK-NOT: tensor.
func.func @relu_pad(%x: tensor<2x4x8xf32>) -> tensor<2x6x10xf32> {
  %zero = arith.constant 0.0 : f32
  %zeros = arith.constant dense<0.0> : vector<2x4x8xf32>
  %c0 = arith.constant 0 : index
  %poison = ub.poison : f32
  %e = tensor.empty() : tensor<2x4x8xf32>
  %v = vector.transfer_read %x[%c0, %c0, %c0], %poison : tensor<2x4x8xf32>, vector<2x4x8xf32>
  %r = arith.maximumf %v, %zeros : vector<2x4x8xf32>
  %t = vector.transfer_write %r, %e[%c0, %c0, %c0] : vector<2x4x8xf32>, tensor<2x4x8xf32>
  %p = tensor.pad %t low[0, 1, 1] high[0, 1, 1] {
  ^bb0(%i: index, %j: index, %k: index):
    tensor.yield %zero : f32
  } : tensor<2x4x8xf32> to tensor<2x6x10xf32>
  return %p : tensor<2x6x10xf32>
}
