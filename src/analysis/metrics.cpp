// Outlier-feature metrics (see metrics.h for the formulas). Seed A: per-row Pearson kurtosis and
// inf norm with running per-name means. Seed B: kurtosis of neuron RMS, signal propagation Gram
// statistics, max/median ratio, attention entropy. Double accumulation; parallel loops write
// per-item partial results that are then summed in a fixed order (thread-count independent).
// Seed A's per-row statistics (ops row_moments, the formulas of ops/row_moments.h) and seed B's
// hidden-state sums (ops hidden_state_sums) run on the tensor's own backend, so a GPU activation
// is not copied to the host; this file turns their results into the metrics. Attention entropy
// reads rows an attention op computed, or host probabilities.
#include "analysis/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/bf16.h"
#include "ops/ops.h"
#include "ops/row_moments.h"

namespace oft::analysis {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Calls f(const T* values, int64_t n): in place for CPU F32/F64/BF16, otherwise on a host f64
// copy.
template <class F>
auto with_values(const Tensor& t, const char* what, F&& f) {
  OFT_CHECK(t.defined(), what, ": tensor is undefined");
  OFT_CHECK(t.dtype() != DType::I32, what, ": expected a floating-point tensor, got ",
            dtype_name(t.dtype()));
  if (t.device() == Device::CPU && t.dtype() == DType::F64) return f(t.data<double>(), t.numel());
  if (t.device() == Device::CPU && t.dtype() == DType::F32) return f(t.data<float>(), t.numel());
  if (t.device() == Device::CPU && t.dtype() == DType::BF16)
    return f(static_cast<const Bf16Value*>(t.raw()), t.numel());
  const std::vector<double> v = t.to_vector();
  return f(v.data(), static_cast<int64_t>(v.size()));
}

// Max that propagates NaN (a diverged run must not look clean).
double nan_max(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return kNaN;
  return a > b ? a : b;
}

struct MaxAcc {
  bool any = false;
  double v = kNaN;
  void add(double x) {
    v = any ? nan_max(v, x) : x;
    any = true;
  }
};

template <class T>
double kurtosis_impl(const T* x, int64_t n, double eps) {
  OFT_CHECK(n >= 2, "pearson_kurtosis: a row needs at least 2 values (got ", n, ")");
  return ops::row_kurtosis_f64(x, n, eps);
}

template <class T>
double inf_norm_impl(const T* x, int64_t n) {
  OFT_CHECK(n >= 1, "inf_norm: empty row");
  return ops::row_inf_norm_f64(x, n);
}

int64_t check_rows(const Tensor& t, int64_t row_len, const char* what) {
  OFT_CHECK(row_len > 0, what, ": row_len must be >= 1 (got ", row_len, ")");
  OFT_CHECK(t.numel() > 0 && t.numel() % row_len == 0, what, ": ", t.numel(),
            " values (shape ", shape_str(t.shape()), ") do not split into rows of ", row_len);
  return t.numel() / row_len;
}

// Per-row kurtosis (when kurt != nullptr) and inf norm (when inf != nullptr), computed by the
// tensor's own backend where it lives (row_moments: a GPU activation is not copied to the host);
// dtypes that backend does not take go through an f64 host copy.
void row_stats(const Tensor& t, int64_t row_len, double eps, std::vector<double>* kurt,
               std::vector<double>* inf, const char* what) {
  OFT_CHECK(t.defined(), what, ": tensor is undefined");
  OFT_CHECK(t.dtype() != DType::I32, what, ": expected a floating-point tensor, got ",
            dtype_name(t.dtype()));
  const int64_t rows = check_rows(t, row_len, what);
  if (kurt)
    OFT_CHECK(row_len >= 2, "pearson_kurtosis: a row needs at least 2 values (got ", row_len, ")");
  const bool native = t.device() == Device::CPU
                          ? (t.dtype() == DType::F32 || t.dtype() == DType::F64)
                          : (t.dtype() == DType::F32 || t.dtype() == DType::BF16);
  const Tensor src = native ? t : t.to(Device::CPU).cast(DType::F64);
  Tensor out = Tensor::empty({rows, 2}, DType::F64, src.device());
  ops::on(src).row_moments(out, src, row_len, kurt != nullptr, eps);
  const std::vector<double> v = out.to(Device::CPU).to_vector();
  if (kurt) kurt->resize(static_cast<size_t>(rows));
  if (inf) inf->resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    if (kurt) (*kurt)[static_cast<size_t>(r)] = v[static_cast<size_t>(2 * r)];
    if (inf) (*inf)[static_cast<size_t>(r)] = v[static_cast<size_t>(2 * r + 1)];
  }
}

}  // namespace

// ---------------------------------------------------------------- seed A

double pearson_kurtosis(const double* x, int64_t n, double eps) { return kurtosis_impl(x, n, eps); }
double pearson_kurtosis(const float* x, int64_t n, double eps) { return kurtosis_impl(x, n, eps); }
double inf_norm(const double* x, int64_t n) { return inf_norm_impl(x, n); }
double inf_norm(const float* x, int64_t n) { return inf_norm_impl(x, n); }

double inf_norm(const Tensor& t) {
  return with_values(t, "inf_norm", [](const auto* p, int64_t n) { return inf_norm_impl(p, n); });
}

std::vector<double> row_kurtosis(const Tensor& t, int64_t row_len, double eps) {
  std::vector<double> k;
  row_stats(t, row_len, eps, &k, nullptr, "row_kurtosis");
  return k;
}

std::vector<double> row_inf_norm(const Tensor& t, int64_t row_len) {
  std::vector<double> m;
  row_stats(t, row_len, 0, nullptr, &m, "row_inf_norm");
  return m;
}

void SeedATracker::add(const std::string& name, int64_t layer, const Tensor& t, int64_t row_len,
                       bool with_kurtosis) {
  const std::string what = "SeedATracker::add(" + name + ")";
  std::vector<double> kurt, inf;
  row_stats(t, row_len, kSeedAKurtosisEps, with_kurtosis ? &kurt : nullptr, &inf, what.c_str());

  auto it = index_.find(name);
  if (it == index_.end()) {
    it = index_.emplace(name, entries_.size()).first;
    Acc a;
    a.e.name = name;
    a.e.layer = layer;
    a.e.kurtosis_mean = kNaN;
    entries_.push_back(std::move(a));
  }
  Acc& a = entries_[it->second];
  OFT_CHECK(a.e.layer == layer, what, ": tracked before with layer ", a.e.layer, ", now ", layer);
  for (double v : inf) {
    a.inf_sum += v;
    a.e.inf_norm_max = a.e.rows == 0 ? v : nan_max(a.e.inf_norm_max, v);
    ++a.e.rows;
  }
  a.e.inf_norm_mean = a.inf_sum / static_cast<double>(a.e.rows);
  if (with_kurtosis) {
    for (double v : kurt) a.kurt_sum += v;
    a.e.kurtosis_rows += static_cast<int64_t>(kurt.size());
    a.e.kurtosis_mean = a.kurt_sum / static_cast<double>(a.e.kurtosis_rows);
  }
}

std::vector<SeedATracker::Entry> SeedATracker::entries() const {
  std::vector<Entry> out;
  out.reserve(entries_.size());
  for (const Acc& a : entries_) out.push_back(a.e);
  return out;
}

const SeedATracker::Entry* SeedATracker::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second].e;
}

void SeedATracker::clear() {
  entries_.clear();
  index_.clear();
}

SeedASummary SeedATracker::summarize(
    const std::function<std::string(const std::string&)>& kind_of) const {
  MaxAcc all, ffn, layer, ln, ffn_io, attn_out;
  MaxAcc p_all, p_ffn, p_layer, p_ln, p_ffn_io, p_attn_out;
  MaxAcc k_max, k_layer;
  double k_sum = 0;
  int64_t k_names = 0;
  for (const Acc& a : entries_) {
    const Entry& e = a.e;
    const std::string kind = kind_of(e.name);
    MaxAcc *m = nullptr, *p = nullptr;
    if (kind == "ffn") m = &ffn, p = &p_ffn;
    else if (kind == "layer") m = &layer, p = &p_layer;
    else if (kind == "ln") m = &ln, p = &p_ln;
    else if (kind == "ffn_io") m = &ffn_io, p = &p_ffn_io;
    else if (kind == "attn_out") m = &attn_out, p = &p_attn_out;
    else
      OFT_CHECK(kind == "other", "SeedATracker::summarize: kind of '", e.name, "' is '", kind,
                "'; expected ffn, layer, ln, attn_out, ffn_io or other");
    if (e.rows > 0) {
      all.add(e.inf_norm_mean);
      p_all.add(e.inf_norm_max);
      if (m) m->add(e.inf_norm_mean), p->add(e.inf_norm_max);
    }
    if (e.kurtosis_rows > 0) {
      k_sum += e.kurtosis_mean;
      ++k_names;
      k_max.add(e.kurtosis_mean);
      if (kind == "layer") k_layer.add(e.kurtosis_mean);
    }
  }
  SeedASummary s;
  s.max_inf_norm = all.v;
  s.max_ffn_inf_norm = ffn.v;
  s.max_layer_inf_norm = layer.v;
  s.max_ln_inf_norm = ln.v;
  s.max_ffn_io_inf_norm = ffn_io.v;
  s.max_attn_out_inf_norm = attn_out.v;
  s.peak_inf_norm = p_all.v;
  s.peak_ffn_inf_norm = p_ffn.v;
  s.peak_layer_inf_norm = p_layer.v;
  s.peak_ln_inf_norm = p_ln.v;
  s.peak_ffn_io_inf_norm = p_ffn_io.v;
  s.peak_attn_out_inf_norm = p_attn_out.v;
  s.avg_kurtosis = k_names ? k_sum / static_cast<double>(k_names) : kNaN;
  s.max_kurtosis = k_max.v;
  s.max_layer_kurtosis = k_layer.v;
  s.names = static_cast<int64_t>(entries_.size());
  s.kurtosis_names = k_names;
  return s;
}

namespace {
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }
}  // namespace

nlohmann::json SeedATracker::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const Acc& a : entries_) {
    const Entry& e = a.e;
    j[e.name] = {{"layer", e.layer},
                 {"kurtosis", num(e.kurtosis_mean)},
                 {"kurtosis_rows", e.kurtosis_rows},
                 {"inf_norm", num(e.inf_norm_mean)},
                 {"inf_norm_max", num(e.inf_norm_max)},
                 {"rows", e.rows}};
  }
  return j;
}

nlohmann::json to_json(const SeedASummary& s) {
  return {{"max_inf_norm", num(s.max_inf_norm)},
          {"max_ffn_inf_norm", num(s.max_ffn_inf_norm)},
          {"max_layer_inf_norm", num(s.max_layer_inf_norm)},
          {"max_ln_inf_norm", num(s.max_ln_inf_norm)},
          {"max_ffn_io_inf_norm", num(s.max_ffn_io_inf_norm)},
          {"max_attn_out_inf_norm", num(s.max_attn_out_inf_norm)},
          {"peak_inf_norm", num(s.peak_inf_norm)},
          {"peak_ffn_inf_norm", num(s.peak_ffn_inf_norm)},
          {"peak_layer_inf_norm", num(s.peak_layer_inf_norm)},
          {"peak_ln_inf_norm", num(s.peak_ln_inf_norm)},
          {"peak_ffn_io_inf_norm", num(s.peak_ffn_io_inf_norm)},
          {"peak_attn_out_inf_norm", num(s.peak_attn_out_inf_norm)},
          {"avg_kurtosis", num(s.avg_kurtosis)},
          {"max_kurtosis", num(s.max_kurtosis)},
          {"max_layer_kurtosis", num(s.max_layer_kurtosis)},
          {"names", s.names},
          {"kurtosis_names", s.kurtosis_names}};
}

// ---------------------------------------------------------------- seed B

namespace {

using Sums = ops::HiddenStateSums;

// The sums of h's tokens, computed where h lives (ops hidden_state_sums: a GPU hidden state is
// not copied to the host); B = 1, T = N when the caller has no sequences.
Sums sums_of(const Tensor& h, int64_t B, int64_t T, unsigned parts, bool centre,
             const char* what) {
  OFT_CHECK(h.defined() && h.ndim() >= 1 && h.numel() > 0, what, ": expected a non-empty tensor");
  OFT_CHECK(h.dtype() != DType::I32, what, ": expected a floating-point tensor, got ",
            dtype_name(h.dtype()));
  const int64_t d = h.dim(-1), N = h.numel() / d;
  if (B < 0) B = 1, T = N;
  OFT_CHECK(B >= 1 && T >= 1 && B * T == N, what, ": B*T = ", B, "*", T, " does not match the ",
            N, " tokens of the hidden state (d = ", d, ")");
  return ops::on(h).hidden_state_sums(h, B, T, parts, centre);
}

// r = sqrt(mean x~^2) + 1e-8.
double global_rms(const Sums& S) {
  return std::sqrt(S.row_sq / static_cast<double>(S.N * S.d)) + kSeedBRmsEps;
}

std::vector<double> mean_squares(const Sums& S) {
  const double r = global_rms(S);
  std::vector<double> s2 = S.col_sq;
  const double scale = 1.0 / (static_cast<double>(S.N) * r * r);
  for (double& v : s2) v *= scale;
  return s2;
}

KurtosisRms kurtosis_from(const Sums& S) {
  OFT_CHECK(S.d >= 2, "kurtosis_of_neuron_rms: need d >= 2 features (got ", S.d, ")");
  const std::vector<double> s2 = mean_squares(S);
  const double d = static_cast<double>(S.d);
  double m = 0, m4 = 0;
  for (double v : s2) m += v, m4 += v * v;
  m /= d;
  m4 /= d;
  double var = 0;
  for (double v : s2) var += (v - m) * (v - m);
  KurtosisRms k;
  k.kurtosis = m4 / (m * m);
  k.var_form = var / (d - 1);
  k.rms = global_rms(S);
  k.mean_s2 = m;
  k.tokens = S.N;
  k.d = S.d;
  return k;
}

void check_signal_shape(const Tensor& h) {
  const int64_t d = h.numel() > 0 && h.ndim() >= 1 ? h.dim(-1) : 0, N = d ? h.numel() / d : 0;
  OFT_CHECK(N >= 2 && d >= 2, "signal_propagation: need >= 2 tokens and >= 2 features (got N = ",
            N, ", d = ", d, ")");
}

SignalProp signal_from(const Sums& S, int64_t B, int64_t T) {
  const double Nd = static_cast<double>(S.N), dd = static_cast<double>(S.d);
  const double r = global_rms(S), r2 = r * r;
  SignalProp s;
  const double pairs_f = dd * (dd - 1);
  // (Z^T Z / N)_ij = F_ij / (N r^2); off-diagonal entries come in symmetric pairs.
  s.feat_corr_rms = std::sqrt(2 * S.f_off / pairs_f) / (Nd * r2);
  s.feat_cos_rms = std::sqrt(2 * S.cos_off / pairs_f);

  // Token Gram over all N tokens: (Z Z^T / d)_nm = <x~_n, x~_m> / (d r^2).
  //   sum_{n != m} <x~_n, x~_m>   = |sum_n x~_n|^2 - sum_n |x~_n|^2 = N^2 |mu|^2 - sum_n |x~_n|^2
  //   sum_{n != m} <x~_n, x~_m>^2 = ||X~ X~^T||_F^2 - sum_n |x~_n|^4 = ||F||_F^2 - sum_n |x~_n|^4
  double mu2 = 0;
  for (double v : S.col_sum) mu2 += (v / Nd) * (v / Nd);
  const double pairs_t = Nd * (Nd - 1);
  const double A = dd * r2;
  s.token_corr_mean = (Nd * Nd * mu2 - S.row_sq) / A / pairs_t;
  const double sq_off = std::max(0.0, S.f_diag + 2 * S.f_off - S.row_sq2);
  s.token_corr_rms = std::sqrt(sq_off / pairs_t) / A;

  // Per-sequence token cosines, pooled over the B * T (T - 1) / 2 unordered pairs.
  if (T < 2) {
    s.token_cos_mean = s.token_cos_rms = kNaN;
    return s;
  }
  const double pairs_s = static_cast<double>(B) * static_cast<double>(T) *
                         static_cast<double>(T - 1) / 2;
  s.token_cos_mean = S.cos_sum / pairs_s;
  s.token_cos_rms = std::sqrt(S.cos_sq / pairs_s);
  return s;
}

constexpr unsigned kSignalParts = Sums::kFeatureGram | Sums::kTokenCos;

}  // namespace

KurtosisRms kurtosis_of_neuron_rms(const Tensor& h) {
  return kurtosis_from(sums_of(h, -1, -1, Sums::kColumns, true, "kurtosis_of_neuron_rms"));
}

std::vector<double> neuron_mean_squares(const Tensor& h) {
  return mean_squares(sums_of(h, -1, -1, Sums::kColumns, true, "neuron_mean_squares"));
}

SignalProp signal_propagation(const Tensor& h, int64_t B, int64_t T) {
  check_signal_shape(h);
  return signal_from(sums_of(h, B, T, kSignalParts, true, "signal_propagation"), B, T);
}

double max_median_ratio(const Tensor& h, bool centre) {
  const Sums S = sums_of(h, -1, -1, Sums::kMaxMedian, centre, "max_median_ratio");
  return S.ratio_sum / static_cast<double>(S.N);
}

HiddenStateMetrics hidden_state_metrics(const Tensor& h, int64_t B, int64_t T) {
  check_signal_shape(h);
  const Sums S = sums_of(h, B, T, Sums::kColumns | kSignalParts | Sums::kMaxMedian, true,
                         "hidden_state_metrics");
  HiddenStateMetrics m;
  m.kurt = kurtosis_from(S);
  m.signal = signal_from(S, B, T);
  m.max_median_ratio = S.ratio_sum / static_cast<double>(S.N);
  return m;
}

namespace {

// Per (b, h): sum over queries of the row entropy.
std::vector<double> entropy_sums(const Tensor& probs, bool causal, int64_t& B, int64_t& H,
                                 int64_t& Tq) {
  OFT_CHECK(probs.ndim() == 4, "attention_entropy: expected probabilities [B, H, Tq, Tk], got ",
            shape_str(probs.shape()));
  B = probs.dim(0), H = probs.dim(1), Tq = probs.dim(2);
  const int64_t Tk = probs.dim(3);
  OFT_CHECK(!causal || Tq == Tk, "attention_entropy: causal needs Tq == Tk (got ", Tq, " and ",
            Tk, ")");
  OFT_CHECK(B * H * Tq > 0 && Tk > 0, "attention_entropy: empty probabilities");
  const int64_t BH = B * H;
  std::vector<double> sums(BH, 0.0);
  const int64_t Tq_ = Tq;
  with_values(probs, "attention_entropy", [&](const auto* p, int64_t) {
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      double s = 0;
      for (int64_t i = 0; i < Tq_; ++i) {
        const auto* row = p + (bh * Tq_ + i) * Tk;
        s += ops::row_entropy_f64(row, causal ? i + 1 : Tk);
      }
      sums[bh] = s;
    }
    return 0;
  });
  return sums;
}

}  // namespace

std::vector<double> attention_entropy_per_head(const Tensor& probs, bool causal) {
  int64_t B, H, Tq;
  const std::vector<double> sums = entropy_sums(probs, causal, B, H, Tq);
  std::vector<double> out(H, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) out[h] += sums[b * H + h];
  for (double& v : out) v /= static_cast<double>(B * Tq);
  return out;
}

double attention_entropy(const Tensor& probs, bool causal) {
  int64_t B, H, Tq;
  const std::vector<double> sums = entropy_sums(probs, causal, B, H, Tq);
  double s = 0;
  for (double v : sums) s += v;
  return s / static_cast<double>(B * H * Tq);
}

double attention_entropy_from_rows(const std::vector<double>& rows, int64_t Tq) {
  const int64_t n = static_cast<int64_t>(rows.size());
  OFT_CHECK(Tq > 0 && n > 0 && n % Tq == 0, "attention_entropy_from_rows: ", n,
            " row entropies do not split into sequences of ", Tq, " queries");
  double s = 0;
  for (int64_t bh = 0; bh < n / Tq; ++bh) {  // per (b, h) first, as entropy_sums
    double sb = 0;
    for (int64_t i = 0; i < Tq; ++i) sb += rows[static_cast<size_t>(bh * Tq + i)];
    s += sb;
  }
  return s / static_cast<double>(n);
}

// ---------------------------------------------------------------- JSON

void put_json(nlohmann::json& out, const std::string& prefix, const KurtosisRms& k) {
  out[prefix + "kurtosis"] = num(k.kurtosis);
  out[prefix + "kurtosis_var"] = num(k.var_form);
  out[prefix + "x_rms"] = num(k.rms);
}

void put_json(nlohmann::json& out, const std::string& prefix, const SignalProp& s) {
  out[prefix + "feat_corr_rms"] = num(s.feat_corr_rms);
  out[prefix + "feat_cos_rms"] = num(s.feat_cos_rms);
  out[prefix + "token_corr_mean"] = num(s.token_corr_mean);
  out[prefix + "token_corr_rms"] = num(s.token_corr_rms);
  out[prefix + "token_cos_mean"] = num(s.token_cos_mean);
  out[prefix + "token_cos_rms"] = num(s.token_cos_rms);
}

void put_json(nlohmann::json& out, const std::string& prefix, const HiddenStateMetrics& m) {
  put_json(out, prefix, m.kurt);
  put_json(out, prefix, m.signal);
  out[prefix + "max_median_ratio"] = num(m.max_median_ratio);
}

void put_attention_entropy(nlohmann::json& out, const std::string& prefix, double mean,
                           const std::vector<double>& per_head) {
  out[prefix + "entropy"] = num(mean);
  for (size_t h = 0; h < per_head.size(); ++h)
    out[prefix + "entropy_head." + std::to_string(h)] = num(per_head[h]);
}

}  // namespace oft::analysis
