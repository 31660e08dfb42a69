// Matrix products of the CUDA backend through cuBLASLt:
//   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C,  op(X) = X^T when trans,
// with row-major tensors: A is [M,K] ([K,M] when transA), B is [K,N] ([N,K] when transB).
//
// cuBLASLt is column-major. A row-major [R, S] matrix is the column-major [S, R] matrix of its
// transpose, so instead of moving data we compute C^T = op(B)^T @ op(A)^T in column-major terms:
// the first cuBLASLt operand is B (transposed iff transB), the second is A (transposed iff
// transA), m = N, n = M, k = K, and every leading dimension is the row length of the row-major
// tensor.
//
// dtypes: A and B share f32 or bf16; C is that dtype or f32 (weight gradients accumulate with
// beta = 1 into f32 from bf16 operands). Compute type CUBLAS_COMPUTE_32F with f32 scale: bf16
// products run on tensor cores with fp32 accumulation, f32 products are full fp32 (no TF32), so
// f32 runs match the CPU backend to rounding.
//
// One cuBLASLt handle per process; a 32 MiB workspace from oft::cuda::scratch; the matmul
// descriptor, the three layouts and the heuristic's algorithm are cached per problem (shape,
// transposes, dtypes, beta != 0, pointer alignments) so a repeated shape costs no heuristic
// query.
#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

#define OFT_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                        \
    cublasStatus_t oft_st_ = (expr);                                                          \
    if (oft_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::oft::fail("cuBLASLt error: ", cublasLtGetStatusString(oft_st_), " (", #expr, ") at ", \
                  __FILE__, ":", __LINE__);                                                   \
  } while (0)

namespace oft::ops {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

cublasLtHandle_t lt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    OFT_CUBLAS_CHECK(cublasLtCreate(&x));
    return x;
  }();
  return h;
}

cudaDataType_t cuda_type(DType d) { return d == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must only offer
// kernels whose vector loads this alignment allows (tensor slices can start anywhere).
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct PlanKey {
  int64_t M, N, K;
  bool transA, transB;
  DType ab, c;
  bool beta_nonzero;
  uint32_t align_a, align_b, align_c;
  bool bias = false;  // CUBLASLT_EPILOGUE_BIAS: C[m, n] += bias[n] (linear_fwd)
  bool operator<(const PlanKey& o) const {
    return std::tie(M, N, K, transA, transB, ab, c, beta_nonzero, align_a, align_b, align_c, bias) <
           std::tie(o.M, o.N, o.K, o.transA, o.transB, o.ab, o.c, o.beta_nonzero, o.align_a,
                    o.align_b, o.align_c, o.bias);
  }
};

// Everything cublasLtMatmul needs besides pointers and scalars; kept for the process lifetime.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr;   // B, column-major view
  cublasLtMatrixLayout_t second = nullptr;  // A, column-major view
  cublasLtMatrixLayout_t out = nullptr;     // C (also D)
  cublasLtMatmulAlgo_t algo{};
};

Plan make_plan(const PlanKey& k) {
  Plan p;
  OFT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = k.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = k.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                  sizeof(op_first)));
  OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                  &op_second, sizeof(op_second)));
  if (k.bias) {
    // In the column-major view D is [N rows, M cols]: the epilogue's per-row bias is per output
    // feature. The bias has C's dtype; its pointer is set before each call.
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt = cuda_type(k.c);
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                    sizeof(epi)));
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  // Column-major views (rows, cols, ld) of the row-major tensors:
  //   B [K,N] -> (N, K, N); B [N,K] (transB) -> (K, N, K)
  //   A [M,K] -> (K, M, K); A [K,M] (transA) -> (M, K, M)
  //   C [M,N] -> (N, M, N)
  const cudaDataType_t tab = cuda_type(k.ab), tc = cuda_type(k.c);
  if (k.transB)
    OFT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.first, tab, uint64_t(k.K), uint64_t(k.N), k.K));
  else
    OFT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.first, tab, uint64_t(k.N), uint64_t(k.K), k.N));
  if (k.transA)
    OFT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.second, tab, uint64_t(k.M), uint64_t(k.K), k.M));
  else
    OFT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.second, tab, uint64_t(k.K), uint64_t(k.M), k.K));
  OFT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.out, tc, uint64_t(k.N), uint64_t(k.M), k.N));

  cublasLtMatmulPreference_t pref = nullptr;
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // The first cuBLASLt operand ("A" to cuBLASLt) is our B and vice versa.
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.align_b, sizeof(k.align_b)));
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.align_a, sizeof(k.align_a)));
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k.align_c, sizeof(k.align_c)));
  OFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k.align_c, sizeof(k.align_c)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle(), p.desc, p.first, p.second,
                                                           p.out, p.out, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  OFT_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
            "matmul: cuBLASLt has no algorithm for M=", k.M, " N=", k.N, " K=", k.K,
            k.transA ? " A^T" : " A", k.transB ? " B^T" : " B", " ", dtype_name(k.ab), " -> ",
            dtype_name(k.c), " (", cublasLtGetStatusString(st), ")");
  p.algo = result.algo;
  return p;
}

const Plan& plan_for(const PlanKey& k) {
  static std::mutex mu;
  static std::map<PlanKey, Plan> plans;  // never destroyed: descriptors live with the process
  std::lock_guard<std::mutex> g(mu);
  auto it = plans.find(k);
  if (it == plans.end()) it = plans.emplace(k, make_plan(k)).first;
  return it->second;
}

}  // namespace

namespace {
// C = alpha op(A) op(B) + beta C (+ bias[n] on every row when bias is given).
void matmul_impl(Backend& backend, Tensor& C, const Tensor& A, bool transA, const Tensor& B,
                 bool transB, double alpha, double beta, const Tensor* bias) {
  cuda::expect_float(A, "matmul A");
  cuda::expect_float(B, "matmul B");
  cuda::expect_float(C, "matmul C");
  OFT_ASSERT(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "matmul needs 2-D views, got A",
             shape_str(A.shape()), " B", shape_str(B.shape()), " C", shape_str(C.shape()));
  const int64_t M = transA ? A.dim(1) : A.dim(0), K = transA ? A.dim(0) : A.dim(1);
  const int64_t K2 = transB ? B.dim(1) : B.dim(0), N = transB ? B.dim(0) : B.dim(1);
  OFT_ASSERT(K == K2 && C.dim(0) == M && C.dim(1) == N, "matmul shapes A", shape_str(A.shape()),
             transA ? "^T" : "", " B", shape_str(B.shape()), transB ? "^T" : "", " C",
             shape_str(C.shape()));
  OFT_ASSERT(A.dtype() == B.dtype(), "matmul: A is ", dtype_name(A.dtype()), " but B is ",
             dtype_name(B.dtype()));
  OFT_ASSERT(C.dtype() == A.dtype() || C.dtype() == DType::F32, "matmul: C must be ",
             dtype_name(A.dtype()), " or f32, got ", dtype_name(C.dtype()));
  if (M == 0 || N == 0) return;
  OFT_ASSERT(C.raw() != A.raw() && C.raw() != B.raw(), "matmul: C must not alias A or B");
  if (K == 0) {  // empty product: C = beta * C
    if (beta == 0.0)
      backend.fill(C, 0.0);
    else if (beta != 1.0)
      backend.scale(C, beta);
    if (bias) backend.add_bias(C, *bias);
    return;
  }
  const PlanKey key{M,
                    N,
                    K,
                    transA,
                    transB,
                    A.dtype(),
                    C.dtype(),
                    beta != 0.0,
                    alignment_of(A.raw()),
                    alignment_of(B.raw()),
                    alignment_of(C.raw()),
                    bias != nullptr};
  const Plan& plan = plan_for(key);
  if (bias) {
    const void* bp = bias->raw();
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &bp, sizeof(bp)));
  }
  const float al = float(alpha), be = float(beta);
  void* ws = cuda::scratch(kWorkspaceBytes);
  OFT_CUBLAS_CHECK(cublasLtMatmul(lt_handle(), plan.desc, &al, B.raw(), plan.first, A.raw(),
                                  plan.second, &be, C.raw(), plan.out, C.raw(), plan.out,
                                  &plan.algo, ws, kWorkspaceBytes, cuda::stream()));
}

}  // namespace

void CudaBackend::matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB,
                         double alpha, double beta) {
  matmul_impl(*this, C, A, transA, B, transB, alpha, beta, nullptr);
}

void CudaBackend::linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  if (!b.defined()) return matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, nullptr);
  cuda::expect_float(b, "linear_fwd bias");
  OFT_ASSERT(b.dtype() == y.dtype() && b.numel() == w.dim(0), "linear_fwd: bias ",
             shape_str(b.shape()), " ", dtype_name(b.dtype()), " for y ", shape_str(y.shape()),
             " ", dtype_name(y.dtype()));
  // The epilogue reads the bias with 16-byte vectors when it can: keep a fallback for views.
  if (reinterpret_cast<uintptr_t>(b.raw()) % 16 != 0) {
    matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, nullptr);
    return add_bias(y, b);
  }
  matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, &b);
}

}  // namespace oft::ops
