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
// f32 runs match the CPU backend to rounding. f64 products (all three f64, no epilogue: the
// evaluation's Gram matrices, hidden_state.cu) use CUBLAS_COMPUTE_64F with f64 scale.
//
// Epilogues (applied by cuBLASLt to the fp32 result r = alpha AB + beta C before D is rounded).
// In the column-major view D is [N rows, M cols] with ld N, so a per-row epilogue vector is per
// output feature (a bias [N]) and an auxiliary matrix with D's layout (ld N) is exactly the
// row-major [M, N] tensor of D's shape.
//   linear_fwd         BIAS            D = r + bias
//   linear_residual_fwd BIAS           D = r + bias with beta = 1 and C = the residual (a tensor
//                                      other than D, same layout: cuBLASLt reads C, writes D)
//   linear_act_fwd     RELU_BIAS/RELU  D = max(r + bias, 0); no auxiliary output: the model
//                                      keeps only D and the backward reads relu' from it
//                      GELU_AUX_BIAS/GELU_AUX  aux = r + bias (the pre-activation), D = gelu(aux)
//                      (bf16 on Hopper: gemm_wgmma.cu's own product, where OFT_GEMM_WGMMA
//                      enables it)
//   linear_act_bwd_dx  DGELU           D = r * gelu'(aux), aux = the saved pre-activation
//                      (bf16 on Hopper: gemm_wgmma.cu's own product, where OFT_GEMM_WGMMA
//                      enables it); ReLU: bf16 on Hopper only, gemm_wgmma.cu's own product
//                      D = r * [act > 0] (on unless OFT_GEMM_WGMMA=0), else the composition
// Attributes: EPILOGUE, BIAS_POINTER + BIAS_DATA_TYPE (= D's dtype), EPILOGUE_AUX_POINTER +
// EPILOGUE_AUX_LD (= N). EPILOGUE_AUX_DATA_TYPE is left unset: it defaults to D's dtype, which is
// what the model stores. cuBLASLt's GELU is the tanh approximation (= Activation::GELU_Tanh).
// Conditions, each with a fallback to the composition of Backend (the plain product with the
// bias epilogue, then activations.cu):
// - GELU and GELU' only in bf16. cuBLASLt evaluates tanh approximately (about 1e-4 relative in
//   fp32, far below bf16's 2^-8 rounding but above the 1e-5 at which f32 GPU runs match the CPU
//   backend), so f32 keeps the exact composition. ReLU is exact and fuses in f32 and bf16.
// - The bias and the auxiliary matrix 16-byte aligned, the auxiliary ld (N) a multiple of 8
//   elements (cuBLASLt's rule for the GELU input matrix); ReLU with `pre` requested (nothing to
//   write it), K = 0, and any problem for which the heuristic offers no algorithm.
// Precision against the composition: the fused activation is computed from the fp32 result
// before any rounding, where the composition rounds the pre-activation to the output dtype first
// and then applies the activation (and rounds again). In bf16 the fused GELU output therefore
// differs from the composed one by up to about one bf16 ulp (the stored `pre` is the same
// rounding of r + bias in both); likewise DGELU multiplies the unrounded product by gelu'(pre)
// and rounds once, where the composition rounds dout @ w first. ReLU commutes with rounding, so
// the fused ReLU equals the composed one up to the product's own summation order.
//
// One cuBLASLt handle per process; a 32 MiB workspace from oft::cuda::scratch; the matmul
// descriptor, the three layouts and the heuristic's algorithm are cached per problem (shape,
// transposes, dtypes, beta != 0, pointer alignments, epilogue kind) so a repeated shape costs no
// heuristic query. An epilogue problem that the heuristic refuses is cached as such and then
// always takes its fallback. The first call of a problem times the heuristic's first eight
// algorithms on its operands (into a scratch output where the product accumulates into C) and
// caches the fastest (measured on an H100, gpt2_124m: +0.5-1.0% in three calls; the output
// layer's forward 1.78 -> 1.61 ms; opt_125m_vanilla: no change). The timing-based choice can
// differ between runs, as eager GPU steps already do in their last bits (atomic sums);
// OFT_MATMUL_TUNE=0 keeps the heuristic's first choice.
#include <cublasLt.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/env_choice.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/gemm_wgmma.h"

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
constexpr int kTuneCandidates = 8;

// OFT_MATMUL_TUNE (1, the default): time the heuristic's first kTuneCandidates algorithms on
// each new problem and keep the fastest; 0: the heuristic's first choice.
bool tune_enabled() {
  static const bool on =
      env_choice("OFT_MATMUL_TUNE", {{"1", 1}, {"0", 0}}, 1,
                 "1 (time cuBLASLt's candidate algorithms per matrix-product shape and keep the "
                 "fastest, the default) or 0 (the heuristic's first choice)") != 0;
  return on;
}

cublasLtHandle_t lt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    OFT_CUBLAS_CHECK(cublasLtCreate(&x));
    return x;
  }();
  return h;
}

cudaDataType_t cuda_type(DType d) {
  return d == DType::BF16 ? CUDA_R_16BF : d == DType::F64 ? CUDA_R_64F : CUDA_R_32F;
}

// alpha and beta in the product's scale type: f64 for f64 products, f32 otherwise.
struct Scales {
  float f[2];
  double d[2];
  bool f64;
  Scales(double alpha, double beta, bool is_f64)
      : f{float(alpha), float(beta)}, d{alpha, beta}, f64(is_f64) {}
  const void* alpha() const { return f64 ? static_cast<const void*>(&d[0]) : &f[0]; }
  const void* beta() const { return f64 ? static_cast<const void*>(&d[1]) : &f[1]; }
  bool beta_nonzero() const { return d[1] != 0.0; }
};

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must only offer
// kernels whose vector loads this alignment allows (tensor slices can start anywhere).
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// The epilogue of one product (see the header comment for what each computes).
enum class Epi : uint8_t { None, Bias, Relu, ReluBias, GeluAux, GeluAuxBias, DGelu };

bool epi_has_bias(Epi e) { return e == Epi::Bias || e == Epi::ReluBias || e == Epi::GeluAuxBias; }
bool epi_has_aux(Epi e) { return e == Epi::GeluAux || e == Epi::GeluAuxBias || e == Epi::DGelu; }

cublasLtEpilogue_t lt_epilogue(Epi e) {
  switch (e) {
    case Epi::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epi::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epi::Relu: return CUBLASLT_EPILOGUE_RELU;
    case Epi::ReluBias: return CUBLASLT_EPILOGUE_RELU_BIAS;
    case Epi::GeluAux: return CUBLASLT_EPILOGUE_GELU_AUX;
    case Epi::GeluAuxBias: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epi::DGelu: return CUBLASLT_EPILOGUE_DGELU;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

// An epilogue and its device pointers: the bias [N] (C's dtype) and the auxiliary matrix with
// C's shape, dtype and row length (written by GELU_AUX*, read by DGELU).
struct EpiArgs {
  Epi kind = Epi::None;
  const Tensor* bias = nullptr;
  const Tensor* aux = nullptr;
  const Tensor* c_in = nullptr;  // the C operand when it is not the output (residual sums)
};

struct PlanKey {
  int64_t M, N, K;
  int64_t lda;  // A's row length: K (M when transA), or a longer row pitch (matmul_impl's a_cols)
  bool transA, transB;
  DType ab, c;
  bool beta_nonzero;
  uint32_t align_a, align_b, align_c;
  Epi epi = Epi::None;
  uint32_t align_bias = 0, align_aux = 0;  // 0 when the epilogue has none
  bool operator<(const PlanKey& o) const {
    return std::tie(M, N, K, lda, transA, transB, ab, c, beta_nonzero, align_a, align_b, align_c,
                    epi, align_bias, align_aux) <
           std::tie(o.M, o.N, o.K, o.lda, o.transA, o.transB, o.ab, o.c, o.beta_nonzero,
                    o.align_a, o.align_b, o.align_c, o.epi, o.align_bias, o.align_aux);
  }
};

// Everything cublasLtMatmul needs besides pointers and scalars; kept for the process lifetime.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr;   // B, column-major view
  cublasLtMatrixLayout_t second = nullptr;  // A, column-major view
  cublasLtMatrixLayout_t out = nullptr;     // C (also D)
  cublasLtMatmulAlgo_t algo{};
  bool found = false;                       // the heuristic offered an algorithm
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's offers, best-ranked first
  bool tuned = false;                       // algo is the fastest candidate measured
};

// Sets the epilogue's pointers on a (cached) descriptor: before the heuristic query, whose
// choice depends on their alignment, and before every call.
void set_epilogue_pointers(cublasLtMatmulDesc_t desc, const EpiArgs& e) {
  if (epi_has_bias(e.kind)) {
    const void* p = e.bias->raw();
    OFT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p, sizeof(p)));
  }
  if (epi_has_aux(e.kind)) {
    void* p = e.aux->raw();  // written by GELU_AUX*, read by DGELU
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p, sizeof(p)));
  }
}

Plan make_plan(const PlanKey& k, const EpiArgs& e) {
  Plan p;
  if (k.ab == DType::F64)  // f64 products (evaluation statistics): f64 throughout
    OFT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_64F, CUDA_R_64F));
  else
    OFT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = k.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = k.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                  sizeof(op_first)));
  OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                  &op_second, sizeof(op_second)));
  if (k.epi != Epi::None) {
    const cublasLtEpilogue_t epi = lt_epilogue(k.epi);
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                    sizeof(epi)));
  }
  if (epi_has_bias(k.epi)) {
    // In the column-major view D is [N rows, M cols]: the epilogue's per-row bias is per output
    // feature. The bias has C's dtype.
    const cudaDataType_t bt = cuda_type(k.c);
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  if (epi_has_aux(k.epi)) {
    // The GELU input matrix has D's column-major layout [N rows, M cols], ld N (the row-major
    // [M, N] tensor), and D's dtype (EPILOGUE_AUX_DATA_TYPE's default).
    const int64_t aux_ld = k.N;
    OFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                    &aux_ld, sizeof(aux_ld)));
  }
  set_epilogue_pointers(p.desc, e);
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
        cublasLtMatrixLayoutCreate(&p.second, tab, uint64_t(k.M), uint64_t(k.K), k.lda));
  else
    OFT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.second, tab, uint64_t(k.K), uint64_t(k.M), k.lda));
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

  cublasLtMatmulHeuristicResult_t results[kTuneCandidates]{};
  int found = 0;
  p.status = cublasLtMatmulAlgoGetHeuristic(lt_handle(), p.desc, p.first, p.second, p.out, p.out,
                                            pref, tune_enabled() ? kTuneCandidates : 1, results,
                                            &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.found = p.status == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.found) p.algo = results[0].algo;
  for (int i = 0; p.found && i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates.push_back(results[i].algo);
  p.tuned = p.candidates.size() <= 1;
  return p;
}

std::mutex g_plans_mu;
std::map<PlanKey, Plan>& plans() {
  static auto* p = new std::map<PlanKey, Plan>;  // never destroyed: descriptors live with the process
  return *p;
}

const Plan& plan_for(const PlanKey& k, const EpiArgs& e) {
  std::lock_guard<std::mutex> g(g_plans_mu);
  auto it = plans().find(k);
  if (it == plans().end()) it = plans().emplace(k, make_plan(k, e)).first;
  return it->second;
}

// An epilogue plan whose call failed: later calls of that problem compose directly.
void refuse_plan(const PlanKey& k, cublasStatus_t st) {
  std::lock_guard<std::mutex> g(g_plans_mu);
  Plan& p = plans().at(k);
  p.found = false;
  p.status = st;
}

// Whether the fallback of an activation epilogue covers its failure (the plain product and the
// bias epilogue must always run).
bool epi_optional(Epi e) { return e != Epi::None && e != Epi::Bias; }

// OFT_MATMUL_TUNE: times every candidate algorithm of `plan` on these operands and caches the
// fastest (the heuristic's first unless another beats it by more than 2%). The timed products
// write D; where D is also the product's C input with beta != 0 (an accumulation) they write a
// scratch copy instead, so that C is unchanged when the real call runs.
void tune_plan(const PlanKey& key, const Plan& plan, Tensor& C, const Tensor& A, const Tensor& B,
               const Scales& sc, const void* c_in) {
  void* ws = cuda::scratch(kWorkspaceBytes);
  Tensor tmp;
  void* d_out = C.raw();
  if (sc.beta_nonzero() && c_in == C.raw()) {
    tmp = Tensor::empty(C.shape(), C.dtype(), Device::CUDA);
    d_out = tmp.raw();
  }
  cudaEvent_t t0, t1;
  OFT_CUDA_CHECK(cudaEventCreate(&t0));
  OFT_CUDA_CHECK(cudaEventCreate(&t1));
  std::vector<float> ms(plan.candidates.size(), 0.f);  // 0: the candidate cannot run
  for (size_t i = 0; i < plan.candidates.size(); ++i) {
    auto run = [&] {
      return cublasLtMatmul(lt_handle(), plan.desc, sc.alpha(), B.raw(), plan.first, A.raw(),
                            plan.second, sc.beta(), c_in, plan.out, d_out, plan.out,
                            &plan.candidates[i], ws, kWorkspaceBytes, cuda::stream());
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up
    constexpr int kReps = 3;
    OFT_CUDA_CHECK(cudaEventRecord(t0, cuda::stream()));
    for (int r = 0; r < kReps; ++r) run();
    OFT_CUDA_CHECK(cudaEventRecord(t1, cuda::stream()));
    OFT_CUDA_CHECK(cudaEventSynchronize(t1));
    OFT_CUDA_CHECK(cudaEventElapsedTime(&ms[i], t0, t1));
  }
  // The fastest, but the heuristic's first choice unless another beats it by more than 2%.
  size_t best_i = 0;
  for (size_t i = 1; i < ms.size(); ++i)
    if (ms[i] > 0.f && (ms[best_i] == 0.f || ms[i] < ms[best_i])) best_i = i;
  if (best_i != 0 && ms[0] > 0.f && ms[best_i] > 0.98f * ms[0]) best_i = 0;
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  if (std::getenv("OFT_MATMUL_TUNE_LOG"))
    std::fprintf(stderr, "matmul tune M=%lld N=%lld K=%lld %s%s epi %d: candidate %zu of %zu (%.3f -> %.3f ms)\n",
                 (long long)key.M, (long long)key.N, (long long)key.K, key.transA ? "A^T " : "",
                 key.transB ? "B^T" : "", int(key.epi), best_i, plan.candidates.size(),
                 double(ms[0]), double(ms[best_i]));
  std::lock_guard<std::mutex> g(g_plans_mu);
  Plan& mp = plans().at(key);
  mp.algo = mp.candidates[best_i];
  mp.tuned = true;
}

// C = alpha op(A) op(B) + beta C with epilogue e. Returns false, having done nothing, when an
// activation epilogue cannot run (K = 0, or no algorithm for it): the caller then composes.
// a_cols > 0 (A not transposed): A [M, P] holds the operand in its first a_cols columns, read
// with row pitch P (a layer input in the bias-column layout, ops.h).
bool matmul_impl(Backend& backend, Tensor& C, const Tensor& A, bool transA, const Tensor& B,
                 bool transB, double alpha, double beta, const EpiArgs& e, int64_t a_cols = 0) {
  if (A.dtype() == DType::F64) {  // f64: plain products only, every operand f64
    cuda::expect_dtype(A, DType::F64, "matmul A");
    cuda::expect_dtype(B, DType::F64, "matmul B");
    cuda::expect_dtype(C, DType::F64, "matmul C");
    OFT_ASSERT(e.kind == Epi::None, "matmul: f64 products take no epilogue");
  } else {
    cuda::expect_float(A, "matmul A");
    cuda::expect_float(B, "matmul B");
    cuda::expect_float(C, "matmul C");
  }
  OFT_ASSERT(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "matmul needs 2-D views, got A",
             shape_str(A.shape()), " B", shape_str(B.shape()), " C", shape_str(C.shape()));
  OFT_ASSERT(a_cols == 0 || (!transA && a_cols <= A.dim(1)),
             "matmul: a row pitch needs A [M, P >= K] not transposed");
  const int64_t M = transA ? A.dim(1) : A.dim(0),
                K = a_cols > 0 ? a_cols : transA ? A.dim(0) : A.dim(1);
  const int64_t lda = A.dim(1);  // the row length of the row-major A (its pitch)
  const int64_t K2 = transB ? B.dim(1) : B.dim(0), N = transB ? B.dim(0) : B.dim(1);
  OFT_ASSERT(K == K2 && C.dim(0) == M && C.dim(1) == N, "matmul shapes A", shape_str(A.shape()),
             transA ? "^T" : "", " B", shape_str(B.shape()), transB ? "^T" : "", " C",
             shape_str(C.shape()));
  OFT_ASSERT(A.dtype() == B.dtype(), "matmul: A is ", dtype_name(A.dtype()), " but B is ",
             dtype_name(B.dtype()));
  OFT_ASSERT(C.dtype() == A.dtype() || C.dtype() == DType::F32, "matmul: C must be ",
             dtype_name(A.dtype()), " or f32, got ", dtype_name(C.dtype()));
  if (M == 0 || N == 0) return true;
  OFT_ASSERT(C.raw() != A.raw() && C.raw() != B.raw(), "matmul: C must not alias A or B");
  if (K == 0) {  // empty product: C = beta * C
    if (epi_optional(e.kind)) return false;
    if (e.c_in) C.copy_from(*e.c_in);
    if (beta == 0.0)
      backend.fill(C, 0.0);
    else if (beta != 1.0)
      backend.scale(C, beta);
    if (e.kind == Epi::Bias) backend.add_bias(C, *e.bias);
    return true;
  }
  const PlanKey key{M,
                    N,
                    K,
                    lda,
                    transA,
                    transB,
                    A.dtype(),
                    C.dtype(),
                    beta != 0.0,
                    alignment_of(A.raw()),
                    alignment_of(B.raw()),
                    std::min(alignment_of(C.raw()), e.c_in ? alignment_of(e.c_in->raw()) : 256u),
                    e.kind,
                    epi_has_bias(e.kind) ? alignment_of(e.bias->raw()) : 0u,
                    epi_has_aux(e.kind) ? alignment_of(e.aux->raw()) : 0u};
  const Plan& plan = plan_for(key, e);
  if (!plan.found) {
    if (epi_optional(e.kind)) return false;
    fail("matmul: cuBLASLt has no algorithm for M=", M, " N=", N, " K=", K, transA ? " A^T" : " A",
         transB ? " B^T" : " B", " ", dtype_name(A.dtype()), " -> ", dtype_name(C.dtype()), " (",
         cublasLtGetStatusString(plan.status), ")");
  }
  set_epilogue_pointers(plan.desc, e);
  const Scales sc(alpha, beta, A.dtype() == DType::F64);
  void* ws = cuda::scratch(kWorkspaceBytes);
  const void* c_in = e.c_in ? e.c_in->raw() : C.raw();
  // (Timing waits for the GPU, which a CUDA graph's recording cannot: the problem is then
  // tuned at its next call outside one.)
  if (!plan.tuned && !cuda::capturing()) tune_plan(key, plan, C, A, B, sc, c_in);
  const cublasStatus_t st =
      cublasLtMatmul(lt_handle(), plan.desc, sc.alpha(), B.raw(), plan.first, A.raw(), plan.second,
                     sc.beta(), c_in, plan.out, C.raw(), plan.out, &plan.algo, ws, kWorkspaceBytes,
                     cuda::stream());
  if (st != CUBLAS_STATUS_SUCCESS && epi_optional(e.kind)) {
    // Refused before launching anything (e.g. an epilogue this cuBLASLt build cannot run with
    // the chosen algorithm): C is untouched and the caller composes.
    refuse_plan(key, st);
    return false;
  }
  if (st != CUBLAS_STATUS_SUCCESS)
    fail("cuBLASLt error: ", cublasLtGetStatusString(st), " (cublasLtMatmul, M=", M, " N=", N,
         " K=", K, ") at ", __FILE__, ":", __LINE__);
  return true;
}

}  // namespace

void CudaBackend::matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB,
                         double alpha, double beta) {
  matmul_impl(*this, C, A, transA, B, transB, alpha, beta, EpiArgs{});
}

void CudaBackend::linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  // x in the bias-column layout (ops.h): cuBLASLt reads its first K columns with the row pitch.
  const int64_t a_cols = is_bias_column_layout(x, w) ? w.dim(1) : 0;
  if (!b.defined()) {
    matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, EpiArgs{}, a_cols);
    return;
  }
  cuda::expect_float(b, "linear_fwd bias");
  OFT_ASSERT(b.dtype() == y.dtype() && b.numel() == w.dim(0), "linear_fwd: bias ",
             shape_str(b.shape()), " ", dtype_name(b.dtype()), " for y ", shape_str(y.shape()),
             " ", dtype_name(y.dtype()));
  // The epilogue reads the bias with 16-byte vectors when it can: keep a fallback for views.
  if (!cuda::aligned16(b.raw())) {
    matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, EpiArgs{}, a_cols);
    return add_bias(y, b);
  }
  matmul_impl(*this, y, x, false, w, true, 1.0, 0.0, EpiArgs{Epi::Bias, &b, nullptr}, a_cols);
}

void CudaBackend::linear_residual_fwd(Tensor& y, const Tensor& x, const Tensor& w,
                                      const Tensor& b, const Tensor& res) {
  OFT_ASSERT(y.raw() != res.raw(), "linear_residual_fwd: y must not alias res");
  cuda::expect_float(res, "linear_residual_fwd res");
  OFT_ASSERT(res.shape() == y.shape() && res.dtype() == y.dtype(), "linear_residual_fwd: res ",
             shape_str(res.shape()), " ", dtype_name(res.dtype()), " for y ",
             shape_str(y.shape()), " ", dtype_name(y.dtype()));
  const bool bias_ok = !b.defined() || cuda::aligned16(b.raw());
  if (b.defined()) {
    cuda::expect_float(b, "linear_residual_fwd bias");
    OFT_ASSERT(b.dtype() == y.dtype() && b.numel() == w.dim(0), "linear_residual_fwd: bias ",
               shape_str(b.shape()), " ", dtype_name(b.dtype()), " for y ",
               shape_str(y.shape()), " ", dtype_name(y.dtype()));
  }
  EpiArgs e{b.defined() && bias_ok ? Epi::Bias : Epi::None, b.defined() ? &b : nullptr, nullptr,
            &res};
  matmul_impl(*this, y, x, false, w, true, 1.0, 1.0, e);
  if (b.defined() && !bias_ok) add_bias(y, b);
}

namespace {
std::atomic<int64_t> g_fused{0}, g_composed{0};
}  // namespace

ActEpilogueCounts act_epilogue_counts() { return {g_fused.load(), g_composed.load()}; }

void CudaBackend::linear_act_fwd(Tensor& act, Tensor& pre, const Tensor& x, const Tensor& w,
                                 const Tensor& b, Activation a) {
  auto compose = [&] {
    ++g_composed;
    Backend::linear_act_fwd(act, pre, x, w, b, a);
  };
  const bool relu = a == Activation::ReLU, gelu = a == Activation::GELU_Tanh;
  // x in the bias-column layout (ops.h): cuBLASLt reads its first K columns with the row pitch;
  // the compositions (Backend's) read a contiguous copy.
  const bool pitched = is_bias_column_layout(x, w);
  // ReLU fuses only without `pre` (its epilogue has no pre-activation output), GELU only with it
  // (the backward needs it; the composition reports the missing tensor) and only in bf16.
  const bool candidate = (relu && !pre.defined()) ||
                         (gelu && pre.defined() && act.dtype() == DType::BF16);
  if (!candidate) return compose();
  cuda::expect_float(act, "linear_act_fwd act");
  OFT_ASSERT(act.ndim() == 2 && w.ndim() == 2 && act.dim(1) == w.dim(0),
             "linear_act_fwd: act ", shape_str(act.shape()), " for w ", shape_str(w.shape()));
  OFT_ASSERT(act.dtype() == x.dtype(), "linear_act_fwd: act is ", dtype_name(act.dtype()),
             " but x is ", dtype_name(x.dtype()));
  if (pre.defined()) {
    OFT_ASSERT(pre.shape() == act.shape() && pre.dtype() == act.dtype(), "linear_act_fwd: pre ",
               shape_str(pre.shape()), " ", dtype_name(pre.dtype()), " for act ",
               shape_str(act.shape()), " ", dtype_name(act.dtype()));
    OFT_ASSERT(pre.raw() != act.raw(), "linear_act_fwd: pre must not alias act");
  }
  if (b.defined()) {
    cuda::expect_float(b, "linear_act_fwd bias");
    OFT_ASSERT(b.dtype() == act.dtype() && b.numel() == w.dim(0), "linear_act_fwd: bias ",
               shape_str(b.shape()), " ", dtype_name(b.dtype()), " for act ",
               shape_str(act.shape()), " ", dtype_name(act.dtype()));
  }
  const int64_t N = act.dim(1);
  const bool ok = (!b.defined() || cuda::aligned16(b.raw())) &&
                  (relu || (cuda::aligned16(pre.raw()) && N % 8 == 0));
  if (!ok) return compose();
  // GELU in bf16 on Hopper: the own product, whose epilogue overlaps the next tile's products.
  if (gelu && !pitched &&
      cuda::gemm::gelu_fwd_supported(x.dim(0), N, x.dim(1), x.raw(), w.raw(),
                                     b.defined() ? b.raw() : nullptr, pre.raw(), act.raw())) {
    cuda::gemm::gelu_fwd(act.raw(), pre.raw(), x.raw(), w.raw(), b.defined() ? b.raw() : nullptr,
                         x.dim(0), N, x.dim(1));
    ++g_fused;
    return;
  }
  EpiArgs e;
  e.kind = relu ? (b.defined() ? Epi::ReluBias : Epi::Relu)
                : (b.defined() ? Epi::GeluAuxBias : Epi::GeluAux);
  e.bias = b.defined() ? &b : nullptr;
  e.aux = relu ? nullptr : &pre;
  if (!matmul_impl(*this, act, x, false, w, true, 1.0, 0.0, e, pitched ? w.dim(1) : 0))
    return compose();
  ++g_fused;
}

void CudaBackend::linear_act_bwd_dx(Tensor& dpre, const Tensor& dout, const Tensor& w,
                                    const Tensor& saved, Activation a, Tensor* dsum) {
  auto compose = [&] {
    ++g_composed;
    Backend::linear_act_bwd_dx(dpre, dout, w, saved, a, dsum);
  };
  if (dsum) {
    cuda::expect_dtype(*dsum, DType::F32, "linear_act_bwd_dx dsum");
    OFT_CHECK(dsum->shape() == Shape{dpre.dim(1)}, "linear_act_bwd_dx: dsum must be [",
              dpre.dim(1), "]");
  }
  // Only GELU-tanh has a cuBLASLt derivative epilogue without a bit mask (ReLU's DRELU would
  // need the mask of RELU_AUX); ReLU's derivative runs in the own Hopper product (gemm_wgmma.cu)
  // where it applies. bf16 only, as in the forward.
  const bool relu = a == Activation::ReLU;
  if ((!relu && a != Activation::GELU_Tanh) || dpre.dtype() != DType::BF16) return compose();
  cuda::expect_float(saved, "linear_act_bwd_dx saved");
  OFT_ASSERT(dpre.ndim() == 2 && saved.shape() == dpre.shape() && saved.dtype() == dpre.dtype(),
             "linear_act_bwd_dx: saved ", shape_str(saved.shape()), " ",
             dtype_name(saved.dtype()), " for dpre ", shape_str(dpre.shape()), " ",
             dtype_name(dpre.dtype()));
  OFT_ASSERT(dpre.raw() != saved.raw(), "linear_act_bwd_dx: dpre must not alias saved");
  OFT_ASSERT(dout.dtype() == dpre.dtype(), "linear_act_bwd_dx: dout is ",
             dtype_name(dout.dtype()), " but dpre is ", dtype_name(dpre.dtype()));
  const int64_t F = dpre.dim(1);
  if (!cuda::aligned16(saved.raw()) || F % 8 != 0) return compose();
  if (relu) {  // saved is relu(pre) or pre: relu' = [saved > 0] either way
    if (!cuda::gemm::drelu_supported(dout.dim(0), F, dout.dim(1), dout.raw(), w.raw(),
                                     saved.raw(), dpre.raw()))
      return compose();
    cuda::gemm::drelu(dpre.raw(), dout.raw(), w.raw(), saved.raw(), dout.dim(0), F, dout.dim(1),
                      dsum ? static_cast<float*>(dsum->raw()) : nullptr);
    ++g_fused;
    return;
  }
  // On Hopper: the own product, whose epilogue overlaps the next tile's products.
  if (cuda::gemm::dgelu_supported(dout.dim(0), F, dout.dim(1), dout.raw(), w.raw(), saved.raw(),
                                  dpre.raw())) {
    cuda::gemm::dgelu(dpre.raw(), dout.raw(), w.raw(), saved.raw(), dout.dim(0), F, dout.dim(1),
                      dsum ? static_cast<float*>(dsum->raw()) : nullptr);
    ++g_fused;
    return;
  }
  if (!matmul_impl(*this, dpre, dout, false, w, false, 1.0, 0.0,
                   EpiArgs{Epi::DGelu, nullptr, &saved}))
    return compose();
  if (dsum) bias_grad(*dsum, dpre);
  ++g_fused;
}

}  // namespace oft::ops
