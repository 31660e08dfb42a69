// The input checks of Backend::hidden_state_sums (ops.h), shared by the CPU and CUDA backends.
#include "ops/ops.h"

namespace oft::ops {

void check_hidden_state_sums_args(const Tensor& h, int64_t B, int64_t T, unsigned parts) {
  OFT_CHECK(h.defined() && h.ndim() >= 1 && h.numel() > 0,
            "hidden_state_sums: expected a non-empty tensor");
  OFT_CHECK(h.dtype() == DType::F32 || h.dtype() == DType::F64 || h.dtype() == DType::BF16,
            "hidden_state_sums: expected an f32, f64 or bf16 tensor, got ", dtype_name(h.dtype()));
  const int64_t d = h.dim(-1), N = h.numel() / std::max<int64_t>(d, 1);
  OFT_CHECK(d >= 1, "hidden_state_sums: the last dimension is empty");
  OFT_CHECK(B >= 1 && T >= 1 && B * T == N, "hidden_state_sums: B*T = ", B, "*", T,
            " does not match the ", N, " tokens of the hidden state ", shape_str(h.shape()));
  OFT_CHECK(parts < 16u, "hidden_state_sums: unknown parts ", parts);
}

}  // namespace oft::ops
