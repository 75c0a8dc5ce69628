// RUN: tilecraft-opt %s -p expand-exp | filecheck %s

// An f32 math.exp (a softmax's, a SiLU's) lowers to one scalar expf call per vector lane on
// x86. It is replaced by a range reduction and a polynomial built from ops that
// vectorize: the argument clamped, k = roundeven(x * log2(e)), r = x - k*ln(2) in two
// parts, a degree-6 polynomial in r by fused multiply-adds, and 2^k assembled in the
// exponent bits; below -87 the result is flushed to zero. An f64 exp is left alone.
// CHECK-LABEL: func.func @softmax_numerator
// CHECK-NOT: math.exp %{{.*}} : f32
// CHECK: arith.cmpf olt
// CHECK: arith.maximumf
// CHECK: arith.minimumf
// CHECK: math.roundeven
// CHECK-COUNT-6: math.fma
// CHECK: arith.fptosi {{.*}} : f32 to i32
// CHECK: arith.shli
// CHECK: arith.bitcast {{.*}} : i32 to f32
// CHECK: arith.select
// CHECK-NOT: math.exp %{{.*}} : f32
// CHECK: math.exp %{{.*}} : f64
// CHECK: linalg.yield
func.func @softmax_numerator(%x: tensor<8x16xf32>, %m: tensor<8xf32>) -> tensor<8x16xf32> {
  %e = tensor.empty() : tensor<8x16xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]}
    ins(%x, %m : tensor<8x16xf32>, tensor<8xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%a: f32, %max: f32, %o: f32):
    %d = arith.subf %a, %max : f32
    %y = math.exp %d : f32
    %w = arith.extf %y : f32 to f64
    %z = math.exp %w : f64
    %t = arith.truncf %z : f64 to f32
    linalg.yield %t : f32
  } -> tensor<8x16xf32>
  return %r : tensor<8x16xf32>
}
