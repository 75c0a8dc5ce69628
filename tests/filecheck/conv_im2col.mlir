// RUN: tilecraft-opt %s -p conv-im2col | filecheck %s

// Convolutions whose filter is a bound argument become GEMMs, and the filter is relaid out
// once, at compile time, for the GEMM that reads it (the function's argument types change
// with it). Three shapes of rewrite:
// - a stride-1 3x3 layer with wide rows (25 output columns) is a chain of 9 matmuls, one
//   per tap, accumulating into one [OH*W', F] result; each tap reads a contiguous row slice
//   of the padded input transposed once to NHWC, and the filter is packed [KH*KW, C, F];
// - a strided 3x3 layer (16 channels: whole vectors) gathers its column matrix tap by tap,
//   each tap a strided window slice of the NHWC input, for one matmul on a [K, F] filter;
// - a 1x1 stride-1 layer with 16 outputs gathers its column matrix as one transpose of its
//   input to NHWC (which sink-transposes cancels against the transpose before it), for one
//   matmul on a [C, F] filter (with fewer than 16 outputs it would be filter[F, C] x
//   x[C, H*W] on NCHW as it stands: tests/passes/test_im2col.py).
// Each GEMM's [N*OH*OW, F] result is transposed back to NCHW. A filter that is not a
// bound argument (%wd) cannot be repacked: its convolution stays.
// CHECK-LABEL: func.func @convs(
// CHECK-SAME: %[[WA:[^:]+]]: tensor<9x16x16xf32>, %[[WB:[^:]+]]: tensor<144x32xf32>, %[[WC:[^:]+]]: tensor<32x16xf32>, %{{.*}}: tensor<1x16x27x27xf32>, %[[WD:[^:]+]]: tensor<8x16x1x1xf32>)

// The tap chain:
// CHECK: tensor.collapse_shape {{.*}} : tensor<1x28x27x16xf32> into tensor<756x16xf32>
// CHECK: tensor.extract_slice %[[WA]][0, 0, 0] [1, 16, 16] [1, 1, 1] : tensor<9x16x16xf32> to tensor<16x16xf32>
// CHECK-COUNT-9: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<675x16xf32>, tensor<16x16xf32>) outs(%{{.*}} : tensor<675x16xf32>)
// CHECK: tensor.extract_slice {{.*}} : tensor<1x25x27x16xf32> to tensor<1x25x25x16xf32>

// The strided layer's tap gather and GEMM:
// CHECK: tensor.extract_slice %{{.*}}[0, 0, 0, 0] [1, 12, 12, 16] [1, 2, 2, 1]
// CHECK: tensor.collapse_shape {{.*}} into tensor<144x144xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %[[WB]] : tensor<144x144xf32>, tensor<144x32xf32>)

// The 1x1 layer: its input transposed to NHWC, one matmul
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<1x32x12x12xf32>) outs(%{{.*}} : tensor<1x12x12x32xf32>)
// CHECK: linalg.matmul ins(%{{.*}}, %[[WC]] : tensor<144x32xf32>, tensor<32x16xf32>)

// The unbound filter's convolution, untouched:
// CHECK: linalg.conv_2d_nchw_fchw {{.*}} ins(%{{.*}}, %[[WD]] : tensor<1x16x12x12xf32>, tensor<8x16x1x1xf32>)
// CHECK-NOT: linalg.conv_2d_nchw_fchw
// CHECK: return
func.func @convs(%wa: tensor<16x16x3x3xf32>, %wb: tensor<32x16x3x3xf32>, %wc: tensor<16x32x1x1xf32>,
                 %x: tensor<1x16x27x27xf32>, %wd: tensor<8x16x1x1xf32>) -> tensor<1x8x12x12xf32>
    attributes {tc.bound_args = 3 : i64} {
  %zero = arith.constant 0.0 : f32
  %ea = tensor.empty() : tensor<1x16x25x25xf32>
  %fa = linalg.fill ins(%zero : f32) outs(%ea : tensor<1x16x25x25xf32>) -> tensor<1x16x25x25xf32>
  %a = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%x, %wa : tensor<1x16x27x27xf32>, tensor<16x16x3x3xf32>) outs(%fa : tensor<1x16x25x25xf32>) -> tensor<1x16x25x25xf32>
  %eb = tensor.empty() : tensor<1x32x12x12xf32>
  %fb = linalg.fill ins(%zero : f32) outs(%eb : tensor<1x32x12x12xf32>) -> tensor<1x32x12x12xf32>
  %b = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<2> : vector<2xi64>}
    ins(%a, %wb : tensor<1x16x25x25xf32>, tensor<32x16x3x3xf32>) outs(%fb : tensor<1x32x12x12xf32>) -> tensor<1x32x12x12xf32>
  %ec = tensor.empty() : tensor<1x16x12x12xf32>
  %fc = linalg.fill ins(%zero : f32) outs(%ec : tensor<1x16x12x12xf32>) -> tensor<1x16x12x12xf32>
  %c = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%b, %wc : tensor<1x32x12x12xf32>, tensor<16x32x1x1xf32>) outs(%fc : tensor<1x16x12x12xf32>) -> tensor<1x16x12x12xf32>
  %ed = tensor.empty() : tensor<1x8x12x12xf32>
  %fd = linalg.fill ins(%zero : f32) outs(%ed : tensor<1x8x12x12xf32>) -> tensor<1x8x12x12xf32>
  %d = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>}
    ins(%c, %wd : tensor<1x16x12x12xf32>, tensor<8x16x1x1xf32>) outs(%fd : tensor<1x8x12x12xf32>) -> tensor<1x8x12x12xf32>
  return %d : tensor<1x8x12x12xf32>
}
