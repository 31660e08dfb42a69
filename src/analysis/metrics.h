// Outlier-feature metrics of the two source systems (REFERENCE.md §4), computed in double
// precision from F32, F64 or BF16 tensors. The per-row (seed A) and per-hidden-state (seed B)
// reductions run where the tensor lives (ops row_moments and hidden_state_sums: a GPU activation
// is not copied to the host) and the metrics are finished here. On the CPU all reductions run in
// a fixed order, so results do not depend on the OpenMP thread count; GPU results agree with them
// within 1e-10 relative (CudaMetrics.HiddenStateSumsMatchCpu, passed on an H100).
//
// Seed A (Bondarenko et al., validate_mlm.py / validate_clm.py):
//   kurt(row)     = mean((x - mean x)^4) / (std_unbiased(x)^4 + 1e-6)      (Pearson, Gaussian ~ 3)
//   inf_norm(row) = max |x|
//   Per hooked tensor the source keeps running means (sum / count) over rows of both: its reported
//   "inf norm" of a tensor is the MEAN over rows of the row's max |x|, not the max over rows.
//   SeedATracker keeps both (inf_norm_mean = source, inf_norm_max = absolute peak).
//   Rows: the source flattens a hook output to (size(0), -1), so a row is a whole sequence
//   (row_len = T*d) for [B,T,d] outputs and a token (row_len = d) for outputs HF OPT keeps
//   flattened to [B*T, d] (fc2 and final_layer_norm). oft supports both through row_len; the
//   convention of the caller decides (to reproduce the source's numbers exactly, mix as it does).
//   Note the absolute 1e-6: a row with std_unbiased = s has its kurtosis scaled by
//   s^4 / (s^4 + 1e-6), e.g. halved at s ~ 0.0316 (a one-hot row of length 1000 gives 498.0,
//   not 996.0). pearson_kurtosis takes eps for that reason (default = the source's 1e-6).
//
// Seed B (He et al., simplified_transformers/train_utils.py), for one hidden state h [N, d]
// (any shape whose last dimension is d; N = numel / d = B*T tokens):
//   x~_n   = x_n - mean_j x_nj                      (centre each token over d)
//   r      = sqrt(mean_{n,j} x~_nj^2) + 1e-8        (one global rms, the source's x_rms)
//   s_j^2  = (1/N) sum_n x~_nj^2 / r^2              (mean_j s_j^2 = 1 up to the 1e-8)
//   kurtosis  = mean_j s_j^4 / (mean_j s_j^2)^2     (paper form, in [1, d], 1 = no outliers)
//   var_form  = var_unbiased_j(s_j^2)               (the value the source logs as "kurtosis";
//              = d/(d-1) * m^2 * (kurtosis - 1) with m = mean_j s_j^2 ~ 1)
//   Signal propagation (z_n = x~_n / r, rows of the normalised N x d matrix Z):
//   feat_corr_rms   = RMS over i != j of (Z^T Z / N)_ij        (source "feat_corr_rms")
//   feat_cos_rms    = RMS over i != j of cos(c_i, c_j), c_j = column j of Z centred over the N
//                     tokens (Pearson correlation between features; a constant feature counts 0)
//   token_corr_mean/rms = mean / RMS over n != m of (Z Z^T / d)_nm over ALL N = B*T tokens of
//                     the batch, across sequences (source "batch_corr_mean" / "batch_corr_rms")
//   token_cos_mean/rms  = mean / RMS of cos(x~_n, x~_m) over the pairs n != m of the same
//                     sequence (T tokens each), pooled over the B sequences (a zero token counts 0)
//   max_median_ratio = mean over tokens n of max_j |x~_nj| / median_j |x~_nj|, median = the lower
//                     middle value for even d (torch.median); centre=false uses x instead of x~.
//   attention entropy = mean over (b, h, query i) of -sum_j p_ij log p_ij, with p <= 0 counting 0
//                     (the source's nansum of 0 * log 0); a NaN probability propagates.
//
// JSON keys (stable; `prefix` is e.g. "hidden_states.3." or "attn.2."):
//   KurtosisRms:  kurtosis, kurtosis_var, x_rms
//   SignalProp:   feat_corr_rms, feat_cos_rms, token_corr_mean, token_corr_rms,
//                 token_cos_mean, token_cos_rms
//   HiddenStateMetrics: all of the above plus max_median_ratio
//   attention:    entropy (put_attention_entropy), entropy_head.<h> when per-head values are given
//   SeedASummary: see to_json(const SeedASummary&); absent kinds are null.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace oft::analysis {

inline constexpr double kSeedAKurtosisEps = 1e-6;  // added to std^4 (source: kurtosis(eps=1e-6))
inline constexpr double kSeedBRmsEps = 1e-8;       // added to the global rms r

// ---------------------------------------------------------------- seed A: per row

// mean((x - mean)^4) / (std_unbiased^4 + eps); n >= 2.
double pearson_kurtosis(const double* x, int64_t n, double eps = kSeedAKurtosisEps);
double pearson_kurtosis(const float* x, int64_t n, double eps = kSeedAKurtosisEps);
// max |x| (NaN if any x is NaN); n >= 1.
double inf_norm(const double* x, int64_t n);
double inf_norm(const float* x, int64_t n);
double inf_norm(const Tensor& t);  // over the whole tensor

// Per-row values of t cut into numel / row_len consecutive rows of row_len values.
std::vector<double> row_kurtosis(const Tensor& t, int64_t row_len,
                                 double eps = kSeedAKurtosisEps);
std::vector<double> row_inf_norm(const Tensor& t, int64_t row_len);

// ---------------------------------------------------------------- seed A: tracker

struct SeedAEntry {
  std::string name;
  int64_t layer = -1;
  double kurtosis_mean = 0;   // sum over rows / kurtosis_rows (NaN when kurtosis_rows == 0)
  int64_t kurtosis_rows = 0;  // rows that entered the kurtosis mean
  double inf_norm_mean = 0;   // mean over rows of the row's max |x| (the source's "inf norm")
  double inf_norm_max = 0;    // max over rows of max |x|
  int64_t rows = 0;           // rows that entered the inf norms
};

// Aggregates over the tracked names. Inf norms follow the source: max over the names of a kind
// of the per-name inf_norm_mean; the peak_* fields give the same with inf_norm_max. A field whose
// kind has no name (or no kurtosis rows) is NaN (null in JSON).
struct SeedASummary {
  double max_inf_norm;         // all names (OPT "Max inf norm")
  double max_ffn_inf_norm;     // kind "ffn"   (OPT fc2, BERT output.dense: "max FFN output inf norm")
  double max_layer_inf_norm;   // kind "layer" (OPT decoder layer output = residual stream)
  double max_ln_inf_norm;      // kind "ln"    (BERT "max LN(FFN i + o) inf norm")
  double max_ffn_io_inf_norm;  // kind "ffn_io" (BERT "max FFN input + output inf norm")
  double max_attn_out_inf_norm;  // kind "attn_out"
  double peak_inf_norm, peak_ffn_inf_norm, peak_layer_inf_norm, peak_ln_inf_norm,
      peak_ffn_io_inf_norm, peak_attn_out_inf_norm;
  double avg_kurtosis;         // mean over names with kurtosis rows of kurtosis_mean
  double max_kurtosis;         // max over those names
  double max_layer_kurtosis;   // max over those of kind "layer" (OPT "Max Kurtosis layers")
  int64_t names;               // tracked names
  int64_t kurtosis_names;      // names with kurtosis rows
};

// Running per-name statistics over rows, in the order names were first added.
//   BERT (source): per layer add "…output.dense" (ffn) and "…output.LayerNorm" (ln) with
//   kurtosis, and the LayerNorm input (ffn_io) with with_kurtosis = false; kurtosis only over the
//   first eval batches (the source: batch_idx <= 256, i.e. 257 batches).
//   OPT (source): layer output (layer), fc2 (ffn), final_layer_norm (ln), out_proj (attn_out),
//   self_attn_layer_norm (ln) per layer plus the decoder's final LayerNorm (ln); kurtosis while
//   batch_idx <= 100 (101 batches).
class SeedATracker {
 public:
  using Entry = SeedAEntry;

  // t holds numel / row_len rows of row_len values (row_len = T*d: per sequence, d: per token).
  // Adding a name again with another layer is an error.
  void add(const std::string& name, int64_t layer, const Tensor& t, int64_t row_len,
           bool with_kurtosis = true);

  std::vector<Entry> entries() const;
  const Entry* find(const std::string& name) const;  // nullptr when not tracked
  bool empty() const { return entries_.empty(); }
  void clear();

  // kind_of(name) must return one of "ffn", "layer", "ln", "attn_out", "ffn_io", "other".
  SeedASummary summarize(const std::function<std::string(const std::string&)>& kind_of) const;

  // {"<name>": {"layer", "kurtosis", "kurtosis_rows", "inf_norm", "inf_norm_max", "rows"}, ...}
  // where "inf_norm" is inf_norm_mean (the source's per-name value).
  nlohmann::json to_json() const;

 private:
  struct Acc {
    Entry e;
    double kurt_sum = 0, inf_sum = 0;
  };
  std::vector<Acc> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// Keys: max_inf_norm, max_ffn_inf_norm, max_layer_inf_norm, max_ln_inf_norm,
// max_ffn_io_inf_norm, max_attn_out_inf_norm, the six peak_* twins, avg_kurtosis, max_kurtosis,
// max_layer_kurtosis, names, kurtosis_names.
nlohmann::json to_json(const SeedASummary& s);

// ---------------------------------------------------------------- seed B

struct KurtosisRms {
  double kurtosis;   // mean_j s_j^4 / (mean_j s_j^2)^2, in [1, d]
  double var_form;   // var_unbiased_j(s_j^2): what the source logs as "kurtosis"
  double rms;        // r = sqrt(mean x~^2) + 1e-8 (source "x_rms")
  double mean_s2;    // mean_j s_j^2 (1 up to the 1e-8)
  int64_t tokens;    // N
  int64_t d;
};
KurtosisRms kurtosis_of_neuron_rms(const Tensor& h);
// s_j^2 for j < d (the per-neuron activation mean squares the kurtosis is taken of).
std::vector<double> neuron_mean_squares(const Tensor& h);

struct SignalProp {
  double feat_corr_rms;    // source: RMS of off-diagonal (Z^T Z / N)
  double feat_cos_rms;     // RMS of off-diagonal feature correlations (columns centred)
  double token_corr_mean;  // source "batch_corr_mean": off-diagonal (Z Z^T / d), all N tokens
  double token_corr_rms;   // source "batch_corr_rms"
  double token_cos_mean;   // cosine of token pairs within each sequence, pooled over sequences
  double token_cos_rms;
};
// h: B*T*d values (e.g. [B, T, d] or [B*T, d]); B*T >= 2, d >= 2. Cost O(N d^2 + B T^2 d).
SignalProp signal_propagation(const Tensor& h, int64_t B, int64_t T);

// Mean over tokens of max_j |x~_nj| / median_j |x~_nj| (x~ centred per token when centre, as
// the source does; a constant token then gives 0/0 = NaN).
double max_median_ratio(const Tensor& h, bool centre = true);

// probs: [B, H, Tq, Tk]. causal: only keys j <= i enter (requires Tq == Tk). The source sums all
// keys, which is the same when masked probabilities are exactly 0.
double attention_entropy(const Tensor& probs, bool causal);
std::vector<double> attention_entropy_per_head(const Tensor& probs, bool causal);  // [H]
// attention_entropy from the rows' entropies an attention op computed (AttentionSpec::
// entropy_rows: [B * H * Tq], row (b * H + h) * Tq + i), summed in the same order.
double attention_entropy_from_rows(const std::vector<double>& rows, int64_t Tq);

// All seed-B hidden-state metrics of one tensor, sharing one host copy.
struct HiddenStateMetrics {
  KurtosisRms kurt;
  SignalProp signal;
  double max_median_ratio;
};
HiddenStateMetrics hidden_state_metrics(const Tensor& h, int64_t B, int64_t T);

// ---------------------------------------------------------------- JSON (flat keys, see top)

void put_json(nlohmann::json& out, const std::string& prefix, const KurtosisRms& k);
void put_json(nlohmann::json& out, const std::string& prefix, const SignalProp& s);
void put_json(nlohmann::json& out, const std::string& prefix, const HiddenStateMetrics& m);
// out[prefix + "entropy"] = mean; with per_head, also out[prefix + "entropy_head.<h>"].
void put_attention_entropy(nlohmann::json& out, const std::string& prefix, double mean,
                           const std::vector<double>& per_head = {});

}  // namespace oft::analysis
