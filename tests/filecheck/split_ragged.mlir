// RUN: tilecraft-opt %s -p split-ragged | filecheck %s

// 37 rows (prime: no divisor from 4 to 64) split as 32 + 5. The matmul's parts each get
// their own zero fill; the bias add's parts read their matmul's part directly (no slice of
// a reassembled tensor between them); the result is the two parts inserted into an empty
// tensor (the whole fill, overwritten, is gone). K and the 96 columns stay whole.
// CHECK-LABEL: func.func @rows(
// CHECK-DAG: %[[F0:[^ ]+]] = linalg.fill {{.*}} -> tensor<32x96xf32>
// CHECK-DAG: %[[F1:[^ ]+]] = linalg.fill {{.*}} -> tensor<5x96xf32>
// CHECK-DAG: %[[M0:[^ ]+]] = linalg.matmul ins({{.*}} : tensor<32x64xf32>, tensor<64x96xf32>) outs(%[[F0]] : tensor<32x96xf32>)
// CHECK-DAG: %[[M1:[^ ]+]] = linalg.matmul ins({{.*}} : tensor<5x64xf32>, tensor<64x96xf32>) outs(%[[F1]] : tensor<5x96xf32>)
// CHECK-DAG: linalg.generic {{.*}} ins(%[[M0]], %{{.*}} : tensor<32x96xf32>, tensor<96xf32>)
// CHECK-DAG: linalg.generic {{.*}} ins(%[[M1]], %{{.*}} : tensor<5x96xf32>, tensor<96xf32>)
// CHECK-NOT: linalg.fill {{.*}} -> tensor<37x96xf32>
// CHECK: tensor.insert_slice {{.*}} into %{{.*}}[32, 0] [5, 96] [1, 1]
// CHECK: return
#id = affine_map<(i, j) -> (i, j)>
#row = affine_map<(i, j) -> (j)>
func.func @rows(%x: tensor<37x64xf32>, %w: tensor<64x96xf32>, %b: tensor<96xf32>) -> tensor<37x96xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<37x96xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<37x96xf32>) -> tensor<37x96xf32>
  %m = linalg.matmul ins(%x, %w : tensor<37x64xf32>, tensor<64x96xf32>) outs(%f : tensor<37x96xf32>) -> tensor<37x96xf32>
  %y = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
    ins(%m, %b : tensor<37x96xf32>, tensor<96xf32>) outs(%e : tensor<37x96xf32>) {
  ^bb0(%v: f32, %c: f32, %o: f32):
    %s = arith.addf %v, %c : f32
    linalg.yield %s : f32
  } -> tensor<37x96xf32>
  return %y : tensor<37x96xf32>
}

// Scores over 197 keys: the matmul splits rows and columns; the max over keys splits its
// (parallel) rows like the matmul's and keeps each row of 197 keys whole.
// CHECK-LABEL: func.func @keys(
// CHECK-COUNT-4: linalg.matmul
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]} ins(%{{.*}} : tensor<192x197xf32>) outs(%{{.*}} : tensor<192xf32>)
// CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]} ins(%{{.*}} : tensor<5x197xf32>) outs(%{{.*}} : tensor<5xf32>)
#red = affine_map<(i, j) -> (i)>
func.func @keys(%q: tensor<197x64xf32>, %k: tensor<64x197xf32>) -> tensor<197xf32> {
  %zero = arith.constant 0.0 : f32
  %ninf = arith.constant 0xFF800000 : f32
  %es = tensor.empty() : tensor<197x197xf32>
  %fs = linalg.fill ins(%zero : f32) outs(%es : tensor<197x197xf32>) -> tensor<197x197xf32>
  %x = linalg.matmul ins(%q, %k : tensor<197x64xf32>, tensor<64x197xf32>) outs(%fs : tensor<197x197xf32>) -> tensor<197x197xf32>
  %e = tensor.empty() : tensor<197xf32>
  %f = linalg.fill ins(%ninf : f32) outs(%e : tensor<197xf32>) -> tensor<197xf32>
  %r = linalg.generic {indexing_maps = [#id, #red], iterator_types = ["parallel", "reduction"]}
    ins(%x : tensor<197x197xf32>) outs(%f : tensor<197xf32>) {
  ^bb0(%v: f32, %o: f32):
    %s = arith.maximumf %v, %o : f32
    linalg.yield %s : f32
  } -> tensor<197xf32>
  return %r : tensor<197xf32>
}

// A copy whose ragged loop is an outer one (a padded input's 31 rows; no contraction
// splits 31) is left whole: its tiles take one row at a time anyway.
// CHECK-LABEL: func.func @outer(
// CHECK-NOT: tensor.extract_slice
// CHECK: return
#t = affine_map<(i, j, c) -> (c, i, j)>
#o = affine_map<(i, j, c) -> (i, j, c)>
func.func @outer(%x: tensor<16x31x30xf32>) -> tensor<31x30x16xf32> {
  %e = tensor.empty() : tensor<31x30x16xf32>
  %y = linalg.generic {indexing_maps = [#t, #o], iterator_types = ["parallel", "parallel", "parallel"]}
    ins(%x : tensor<16x31x30xf32>) outs(%e : tensor<31x30x16xf32>) {
  ^bb0(%v: f32, %out: f32):
    linalg.yield %v : f32
  } -> tensor<31x30x16xf32>
  return %y : tensor<31x30x16xf32>
}

// Extents with a divisor from 4 to 64 (196 = 4·49, 64) are left alone.
// CHECK-LABEL: func.func @friendly(
// CHECK-NOT: tensor.extract_slice
// CHECK: return
func.func @friendly(%x: tensor<196x64xf32>, %w: tensor<64x64xf32>) -> tensor<196x64xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<196x64xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<196x64xf32>) -> tensor<196x64xf32>
  %m = linalg.matmul ins(%x, %w : tensor<196x64xf32>, tensor<64x64xf32>) outs(%f : tensor<196x64xf32>) -> tensor<196x64xf32>
  return %m : tensor<196x64xf32>
}
