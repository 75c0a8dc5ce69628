// RUN: tilecraft-opt %s -p cpu-vector | filecheck %s

// The cpu-vector stage alone on tiled IR: a vectorized ReLU tile on tensors whose result is
// zero-padded for a convolution. The pad is made in place and only its border is filled
// (`backends/cpu/pads.py`): rows 0 and 5 of both planes, then columns 0 and 9 of rows 1-4
// (each fill vectorized in register tiles of at most 64 elements, `COPY_BUDGET`), and the
// ReLU writes its result straight into the buffer's interior, at offset (0, 1, 1), so no
// copy is left and no element is written twice. The function is bufferized (memrefs at its
// boundary) and the vector ops are lowered to 1-D loads and stores.
// CHECK-LABEL: func.func @relu_pad(
// CHECK-SAME: %[[X:[^:]+]]: memref<2x4x8xf32>) -> memref<2x6x10xf32>
// CHECK: vector.load %[[X]][{{.*}}] : memref<2x4x8xf32>, vector<8xf32>
// CHECK: arith.maximumf {{.*}} : vector<2x4x8xf32>
// CHECK: %[[BUF:[^ ]+]] = memref.alloc() {{.*}} : memref<2x6x10xf32>
// CHECK-NOT: linalg.
// CHECK: %[[TOP:[^ ]+]] = memref.subview %[[BUF]][0, 0, 0] [2, 1, 10] [1, 1, 1]
// CHECK-COUNT-2: vector.store %{{.*}}, %[[TOP]][{{.*}}] : {{.*}}, vector<10xf32>
// CHECK: %[[BOTTOM:[^ ]+]] = memref.subview %[[BUF]][0, 5, 0] [2, 1, 10] [1, 1, 1]
// CHECK-COUNT-2: vector.store %{{.*}}, %[[BOTTOM]][{{.*}}] : {{.*}}, vector<10xf32>
// CHECK: %[[LEFT:[^ ]+]] = memref.subview %[[BUF]][0, 1, 0] [2, 4, 1] [1, 1, 1]
// CHECK-COUNT-8: vector.store %{{.*}}, %[[LEFT]][{{.*}}] : {{.*}}, vector<1xf32>
// CHECK: %[[RIGHT:[^ ]+]] = memref.subview %[[BUF]][0, 1, 9] [2, 4, 1] [1, 1, 1]
// CHECK-COUNT-8: vector.store %{{.*}}, %[[RIGHT]][{{.*}}] : {{.*}}, vector<1xf32>
// CHECK: vector.store %{{.*}}, %[[BUF]][%{{.*}}, %{{.*}}, %{{.*}}] : memref<2x6x10xf32>, vector<8xf32>
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
