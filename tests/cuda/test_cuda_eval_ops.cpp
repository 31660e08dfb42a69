// The evaluation-only ops on the GPU against the CPU backend:
// - the attention rows' entropy (AttentionSpec::entropy_rows): 1e-6 relative; the GPU's f32
//   probabilities mirror the CPU's operation by operation but exp / log round differently;
// - row_moments (seed A): row kurtosis to 1e-12 relative (f64 sums in another order), inf norms
//   exactly;
// - hidden_state_sums (seed B): 1e-10 relative (f64 sums and products in another order);
// - simulated quantization of activations (fake_quant, value_range), bit for bit: both compute
//   the grid in f64 from the stored value and round to f32 and then to the storage dtype, and a
//   range is a min / max, exact in any order. Inputs: values on and around the grid's rounding
//   ties, past both clamps, N(0, 2^2) draws, a NaN; lengths that are not a multiple of the
//   16-byte packs, and a view one element off the alignment (the one-element kernel).
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "analysis/collect.h"
#include "analysis/metrics.h"
#include "model/transformer.h"
#include "train/run_config.h"
#include "quant/quantizer.h"
#include "quant/sim.h"

namespace oft::testing {
namespace {

std::vector<double> probe_values(const quant::QGrid& g, int draws, uint64_t seed) {
  std::vector<double> v;
  for (int k = 0; k <= 24; ++k)
    for (double f : {-0.5, 0.5, 0.25})
      v.push_back((g.qmin + (g.qmax - g.qmin) * k / 24.0 - g.zero_point + f) * g.delta);
  v.push_back((g.qmin - g.zero_point - 3.5) * g.delta);
  v.push_back((g.qmax - g.zero_point + 2.5) * g.delta);
  v.push_back(std::numeric_limits<double>::quiet_NaN());
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 2.0);
  for (int i = 0; i < draws; ++i) v.push_back(nd(rng));
  return v;
}

// Elementwise equality, NaN equal to NaN.
void expect_same_values(const Tensor& got, const Tensor& want, const std::string& what) {
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  ASSERT_EQ(g.size(), w.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(g[i] == w[i] || (std::isnan(g[i]) && std::isnan(w[i])))) {
      if (bad++ < 5) ADD_FAILURE() << what << ": element " << i << " " << g[i] << " vs " << w[i];
    }
  EXPECT_EQ(bad, 0) << what;
}

TEST(CudaQuant, FakeQuantMatchesCpuBitForBit) {
  OFT_REQUIRE_CUDA();
  uint64_t seed = std::random_device{}();
  for (const quant::QGrid& g :
       {quant::asymmetric_grid(-1.3, 2.9, 8), quant::symmetric_grid(-0.7, 0.4, 4),
        quant::symmetric_grid(0.0, 5.0, 8), quant::asymmetric_grid(-3.0, 0.2, 16)}) {
    const ops::FakeQuant q{true, g.delta, g.zero_point, g.qmin, g.qmax};
    for (DType d : {DType::F32, DType::BF16}) {
      for (int draws : {5000, 100003}) {
        const std::vector<double> v = probe_values(g, draws, ++seed);
        const int64_t n = static_cast<int64_t>(v.size());
        const Tensor cpu_in = Tensor::from_vector({n}, v, d);
        Tensor want = cpu_in.clone();
        ops::cpu_backend().fake_quant(want, q);
        Tensor gpu = cpu_in.to(Device::CUDA);
        ops::backend(Device::CUDA).fake_quant(gpu, q);
        expect_same_values(gpu, want,
                           std::string(dtype_label(d)) + " n " + std::to_string(n) + " bits " +
                               std::to_string(g.bits));
        // One element past the alignment: the kernel without packs.
        Tensor whole = Tensor::from_vector({n + 1}, [&] {
                         std::vector<double> w{0.0};
                         w.insert(w.end(), v.begin(), v.end());
                         return w;
                       }(), d).to(Device::CUDA);
        Tensor view = whole.slice(1, n + 1);
        ops::backend(Device::CUDA).fake_quant(view, q);
        expect_same_values(view, want, std::string(dtype_label(d)) + " misaligned view");
        EXPECT_EQ(whole.slice(0, 1).to_vector()[0], 0.0) << "the element before the view";
      }
    }
  }
}

TEST(CudaQuant, ValueRangeMatchesCpu) {
  OFT_REQUIRE_CUDA();
  for (DType d : {DType::F32, DType::BF16}) {
    for (int64_t n : {int64_t(1), int64_t(31), int64_t(4097), int64_t(3 << 20) + 5}) {
      Tensor x = randn({n}, 3.0);
      if (n > 100) {  // an outlier far inside, so the extremes are not at the ends
        std::vector<double> v = x.to_vector();
        v[n / 3] = -812.5;
        v[n / 2] = 1e4;
        x = Tensor::from_vector({n}, v, DType::F32);
      }
      const Tensor cpu = d == DType::F32 ? x : x.cast(d);
      const ops::ValueRange want = ops::cpu_backend().value_range(cpu);
      const ops::ValueRange got = ops::backend(Device::CUDA).value_range(cpu.to(Device::CUDA));
      EXPECT_EQ(got.lo, want.lo) << dtype_label(d) << " n " << n;
      EXPECT_EQ(got.hi, want.hi) << dtype_label(d) << " n " << n;
      EXPECT_FALSE(got.nan);
    }
  }
  const Tensor with_nan =
      Tensor::from_vector({4}, {1.5, std::nan(""), -2.0, 0.5}, DType::F32).to(Device::CUDA);
  const ops::ValueRange r = ops::backend(Device::CUDA).value_range(with_nan);
  EXPECT_TRUE(r.nan);
  EXPECT_EQ(r.lo, -2.0);
  EXPECT_EQ(r.hi, 1.5);
  const Tensor all_nan =
      Tensor::from_vector({3}, {std::nan(""), std::nan(""), std::nan("")}, DType::BF16)
          .to(Device::CUDA);
  const ops::ValueRange a = ops::backend(Device::CUDA).value_range(all_nan);
  EXPECT_TRUE(a.nan);
  EXPECT_TRUE(std::isinf(a.lo) && a.lo > 0 && std::isinf(a.hi) && a.hi < 0);
}

TEST(CudaMetrics, RowMomentsMatchCpu) {
  OFT_REQUIRE_CUDA();
  for (DType d : {DType::F32, DType::BF16}) {
    for (int64_t row_len : {int64_t(37), int64_t(768), int64_t(64 * 768)}) {
      const int64_t rows = row_len > 1000 ? 5 : 300;
      Tensor x = randn({rows, row_len}, 1.5);
      std::vector<double> v = x.to_vector();
      v[row_len + 3] = 40.0;                                   // an outlier in row 1
      v[2 * row_len + 1] = std::numeric_limits<double>::quiet_NaN();  // row 2 holds a NaN
      for (int64_t j = 0; j < row_len; ++j) v[3 * row_len + j] = 0.25;  // a constant row
      const Tensor cpu = rounded(Tensor::from_vector({rows, row_len}, v, DType::F32), d);
      for (bool kurt : {true, false}) {
        Tensor want = Tensor::empty({rows, 2}, DType::F64);
        ops::cpu_backend().row_moments(want, cpu, row_len, kurt, 1e-6);
        Tensor got = Tensor::empty({rows, 2}, DType::F64, Device::CUDA);
        ops::backend(Device::CUDA).row_moments(got, to_gpu(cpu, d), row_len, kurt, 1e-6);
        const std::vector<double> g = got.to(Device::CPU).to_vector(), w = want.to_vector();
        for (int64_t r = 0; r < rows; ++r) {
          const std::string at = std::string(dtype_label(d)) + " row_len " +
                                 std::to_string(row_len) + " row " + std::to_string(r);
          if (kurt && !std::isnan(w[2 * r]))
            EXPECT_NEAR(g[2 * r], w[2 * r], 1e-12 * std::fabs(w[2 * r])) << at;
          else
            EXPECT_TRUE(std::isnan(g[2 * r])) << at;
          if (std::isnan(w[2 * r + 1]))
            EXPECT_TRUE(std::isnan(g[2 * r + 1])) << at;
          else
            EXPECT_EQ(g[2 * r + 1], w[2 * r + 1]) << at;
        }
      }
    }
  }
}

// The seed-A tracker fed a GPU activation (no host copy) gives the CPU copy's statistics.
TEST(CudaMetrics, TrackerOnGpuTensorMatchesHostCopy) {
  OFT_REQUIRE_CUDA();
  const Tensor x = randn({4, 256, 96}, 0.8);
  const Tensor gpu = to_gpu(x, DType::BF16);
  const Tensor host = rounded(x, DType::BF16);
  analysis::SeedATracker on_gpu, on_host;
  for (int64_t row_len : {int64_t(96), int64_t(256 * 96)}) {
    const std::string name = "layers.0.fc2." + std::to_string(row_len);
    on_gpu.add(name, 0, gpu, row_len);
    on_host.add(name, 0, host, row_len);
    const auto* a = on_gpu.find(name);
    const auto* b = on_host.find(name);
    ASSERT_TRUE(a && b);
    EXPECT_NEAR(a->kurtosis_mean, b->kurtosis_mean, 1e-12 * std::fabs(b->kurtosis_mean));
    EXPECT_EQ(a->inf_norm_mean, b->inf_norm_mean);
    EXPECT_EQ(a->inf_norm_max, b->inf_norm_max);
    EXPECT_EQ(a->rows, b->rows);
  }
}

// Seed B's hidden-state sums (ops hidden_state_sums) on the GPU against the CPU backend on the
// same values: every statistic to 1e-10 relative (f64 sums in another order, f64 products in
// another blocking); the max / median ratios are exact selections of the same values, so they
// differ only through the token mean's rounding.
void expect_sums_near(const ops::HiddenStateSums& g, const ops::HiddenStateSums& c,
                      const std::string& at) {
  auto near = [&](double a, double b, const char* field) {
    if (std::isnan(b) || std::isinf(b)) {
      EXPECT_TRUE(a == b || (std::isnan(a) && std::isnan(b))) << at << " " << field << ": " << a
                                                               << " vs " << b;
      return;
    }
    EXPECT_NEAR(a, b, 1e-10 * std::max(1e-300, std::fabs(b)) + 1e-300) << at << " " << field;
  };
  EXPECT_EQ(g.N, c.N) << at;
  EXPECT_EQ(g.d, c.d) << at;
  near(g.row_sq, c.row_sq, "row_sq");
  near(g.row_sq2, c.row_sq2, "row_sq2");
  ASSERT_EQ(g.col_sum.size(), c.col_sum.size()) << at;
  ASSERT_EQ(g.col_sq.size(), c.col_sq.size()) << at;
  // A column sum of centred values can be ~0: compare it on the scale of the column's values.
  for (size_t j = 0; j < c.col_sum.size(); ++j) {
    if (std::isnan(c.col_sum[j])) {
      EXPECT_TRUE(std::isnan(g.col_sum[j])) << at << " col_sum " << j;
      continue;
    }
    EXPECT_NEAR(g.col_sum[j], c.col_sum[j], 1e-10 * std::sqrt(c.col_sq[j] * double(c.N)) + 1e-300)
        << at << " col_sum " << j;
    near(g.col_sq[j], c.col_sq[j], "col_sq");
  }
  near(g.f_off, c.f_off, "f_off");
  near(g.f_diag, c.f_diag, "f_diag");
  near(g.cos_off, c.cos_off, "cos_off");
  near(g.cos_sq, c.cos_sq, "cos_sq");
  // A sum of cosines of either sign: on the scale of the sum of their squares.
  EXPECT_NEAR(g.cos_sum, c.cos_sum, 1e-10 * std::max(1.0, c.cos_sq)) << at << " cos_sum";
  near(g.ratio_sum, c.ratio_sum, "ratio_sum");
}

TEST(CudaMetrics, HiddenStateSumsMatchCpu) {
  OFT_REQUIRE_CUDA();
  constexpr unsigned kAll = ops::HiddenStateSums::kColumns | ops::HiddenStateSums::kFeatureGram |
                            ops::HiddenStateSums::kTokenCos | ops::HiddenStateSums::kMaxMedian;
  struct Case {
    int64_t B, T, d;
    int special;  // 0 none, 1 zero + constant tokens, 2 a NaN
  };
  // (d above the kernels' 256 threads, and T above them for the token cosines' rows.)
  for (const Case& k : {Case{3, 37, 70, 0}, Case{2, 256, 768, 1}, Case{2, 300, 1000, 0},
                        Case{1, 5, 3, 0}, Case{2, 9, 17, 2}, Case{4, 1, 33, 0}}) {
    Tensor x = randn({k.B, k.T, k.d}, 0.7);
    std::vector<double> v = x.to_vector();
    // Outlier features: a few columns 40x larger with an offset, as trained models have.
    for (int64_t n = 0; n < k.B * k.T; ++n)
      for (int64_t j = 0; j < k.d; j += 23) v[size_t(n * k.d + j)] = 40 * v[size_t(n * k.d + j)] + 9;
    if (k.special == 1) {
      for (int64_t j = 0; j < k.d; ++j) v[size_t(3 * k.d + j)] = 0.0;   // a zero token
      for (int64_t j = 0; j < k.d; ++j) v[size_t(7 * k.d + j)] = 2.5;   // constant: x~ = 0
    }
    if (k.special == 2) v[size_t(4 * k.d + 2)] = std::numeric_limits<double>::quiet_NaN();
    x = Tensor::from_vector(x.shape(), v, DType::F32);
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      const Tensor host = rounded(x, dt), gpu = to_gpu(x, dt);
      for (bool centre : {true, false}) {
        const std::string at = std::string(dtype_name(dt)) + " B" + std::to_string(k.B) + " T" +
                               std::to_string(k.T) + " d" + std::to_string(k.d) +
                               (centre ? " centred" : " raw");
        const ops::HiddenStateSums c =
            ops::cpu_backend().hidden_state_sums(host, k.B, k.T, kAll, centre);
        const ops::HiddenStateSums g =
            ops::backend(Device::CUDA).hidden_state_sums(gpu, k.B, k.T, kAll, centre);
        expect_sums_near(g, c, at);
      }
    }
  }
}

// The metrics of a GPU hidden state equal those of its host copy (the path they replace).
TEST(CudaMetrics, HiddenStateMetricsOnGpuMatchHostCopy) {
  OFT_REQUIRE_CUDA();
  const int64_t B = 4, T = 128, d = 96;
  const Tensor x = randn({B, T, d}, 1.3);
  const analysis::HiddenStateMetrics g =
      analysis::hidden_state_metrics(to_gpu(x, DType::BF16), B, T);
  const analysis::HiddenStateMetrics c =
      analysis::hidden_state_metrics(rounded(x, DType::BF16), B, T);
  auto near = [](double a, double b, const char* what) {
    EXPECT_NEAR(a, b, 1e-9 * std::max(1.0, std::fabs(b))) << what;
  };
  near(g.kurt.kurtosis, c.kurt.kurtosis, "kurtosis");
  near(g.kurt.var_form, c.kurt.var_form, "kurtosis_var");
  near(g.kurt.rms, c.kurt.rms, "x_rms");
  near(g.signal.feat_corr_rms, c.signal.feat_corr_rms, "feat_corr_rms");
  near(g.signal.feat_cos_rms, c.signal.feat_cos_rms, "feat_cos_rms");
  near(g.signal.token_corr_mean, c.signal.token_corr_mean, "token_corr_mean");
  near(g.signal.token_corr_rms, c.signal.token_corr_rms, "token_corr_rms");
  near(g.signal.token_cos_mean, c.signal.token_cos_mean, "token_cos_mean");
  near(g.signal.token_cos_rms, c.signal.token_cos_rms, "token_cos_rms");
  near(g.max_median_ratio, c.max_median_ratio, "max_median_ratio");
  EXPECT_NEAR(analysis::max_median_ratio(to_gpu(x, DType::F32), false),
              analysis::max_median_ratio(x, false), 1e-12 * c.max_median_ratio);
}

TEST(CudaMetrics, AttentionEntropyRowsMatchCpu) {
  OFT_REQUIRE_CUDA();
  const int64_t B = 2, T = 96, H = 4, D = 64, C = H * D;
  for (DType d : {DType::F32, DType::BF16}) {
    for (bool causal : {true, false}) {
      for (bool quant : {false, true}) {
        const Tensor x = rounded(randn({B * T, 3 * C}, 0.4), d);
        std::vector<double> mv(static_cast<size_t>(B * T), 1.0);
        mv[5] = mv[T + 17] = 0.0;
        const Tensor mask = Tensor::from_vector({B * T}, mv, DType::I32);
        ops::AttentionSpec spec;
        spec.n_head = static_cast<int>(H);
        spec.causal = causal;
        spec.prob = ops::ProbFn::Clipped;
        spec.gamma = -0.03;
        if (quant) spec.prob_quant = {true, 1.0 / 256, 0.0, 0.0, 255.0};
        std::vector<double> want(static_cast<size_t>(B * H * T)), got(want.size());
        spec.entropy_rows = want.data();
        Tensor out = Tensor::empty({B * T, C}, DType::F32), saved;
        ops::cpu_backend().attention_fwd(out, saved, x, causal ? Tensor() : mask, B, T, spec);
        spec.entropy_rows = got.data();
        Tensor gout = poisoned({B * T, C}, d), gsaved;
        ops::backend(Device::CUDA).attention_fwd(gout, gsaved, to_gpu(x, d),
                                                 causal ? Tensor() : mask.to(Device::CUDA), B, T,
                                                 spec);
        const std::string at = std::string(dtype_label(d)) + (causal ? " causal" : " masked") +
                               (quant ? " quantized" : "");
        for (size_t r = 0; r < want.size(); ++r)
          ASSERT_NEAR(got[r], want[r], 1e-6 * std::max(1.0, std::fabs(want[r]))) << at << " row " << r;
        // The output is the op's own (the fast kernels beside the entropy pass).
        EXPECT_LE(rel_err(gout, out), quant ? std::max(1e-3, tol_for(d)) : tol_for(d)) << at;
      }
    }
  }
}

// The collector on a GPU model takes each layer's entropy from the op's rows; it equals the
// metric of the probabilities recomputed on the host (the path it replaces).
TEST(CudaMetrics, CollectorEntropyOnGpuMatchesHostProbabilities) {
  OFT_REQUIRE_CUDA();
  RunConfig cfg;
  cfg.load("tiny_opt_125m_clipped_softmax", {"model.n_layer=2", "model.vocab_size=301"});
  const int64_t B = 2, T = 64;
  TransformerLM m(cfg.model, DType::F32, Device::CUDA, T);
  m.init_weights(3);
  const Tensor tok = randint({B, T}, 0, 301).to(Device::CUDA);
  analysis::OutlierCollector c(cfg.model, false);
  m.set_hook(&c);
  m.forward(tok, tok);
  m.set_hook(nullptr);
  for (size_t l = 0; l < 2; ++l) {
    const std::vector<double>& rows = m.attention_entropy_rows(l);
    ASSERT_EQ(rows.size(), static_cast<size_t>(B * cfg.model.n_head * T)) << "layer " << l;
    const double host = analysis::attention_entropy(m.attention_probs(l), true);
    EXPECT_NEAR(analysis::attention_entropy_from_rows(rows, T), host, 1e-6 * std::fabs(host));
  }
  c.after_forward(m);  // the collector's per-layer value is the rows' metric
  const nlohmann::json j = c.to_json()["attention_entropy"];
  for (size_t l = 0; l < 2; ++l)
    EXPECT_EQ(j.at("h." + std::to_string(l)).get<double>(),
              analysis::attention_entropy_from_rows(m.attention_entropy_rows(l), T));
}

// The whole W8A8 simulation (weights, calibrated activation ranges, quantized evaluation) on a
// GPU model matches the CPU model of the same weights: the calibrated ranges to 1e-2 of their
// span and the quantized loss to 1e-3 (f32; the products sum in another order, so a value on a
// grid's rounding boundary may land on the other side, and a range downstream of it then moves
// by about one grid step, span / 255: seen once, h.1.mlp.c_proj's min 4.3e-3 span apart).
TEST(CudaQuant, SimulatedW8A8MatchesCpu) {
  OFT_REQUIRE_CUDA();
  for (const char* preset : {"tiny_opt_125m_gated_attention", "tiny_bert_base_clipped_softmax"}) {
    RunConfig cfg;
    cfg.load(preset, {"model.n_layer=2", "model.vocab_size=301"});
    const int64_t B = 2, T = 32;
    const Tensor tok = randint({B, T}, 0, 301), tok2 = randint({B, T}, 0, 301);
    double loss[2];
    std::vector<quant::Encoding> enc[2];
    for (int k = 0; k < 2; ++k) {
      const Device dev = k ? Device::CUDA : Device::CPU;
      TransformerLM m(cfg.model, DType::F32, dev, T);
      m.init_weights(5);
      quant::QuantSimulator sim(cfg.quant, cfg.model);
      sim.quantize_weights(m);
      m.set_hook(&sim);
      sim.set_calibrating(true);
      m.forward(tok.to(dev), tok.to(dev));
      sim.set_calibrating(false);
      loss[k] = m.forward(tok2.to(dev), tok2.to(dev));
      m.set_hook(nullptr);
      sim.restore_weights(m);
      enc[k] = sim.activation_encodings();
    }
    EXPECT_NEAR(loss[1], loss[0], 1e-3 * std::fabs(loss[0])) << preset;
    ASSERT_EQ(enc[1].size(), enc[0].size()) << preset;
    for (size_t i = 0; i < enc[0].size(); ++i) {
      const double span = std::max(1e-6, enc[0][i].max - enc[0][i].min);
      EXPECT_NEAR(enc[1][i].min, enc[0][i].min, 1e-2 * span) << preset << " " << enc[0][i].name;
      EXPECT_NEAR(enc[1][i].max, enc[0][i].max, 1e-2 * span) << preset << " " << enc[0][i].name;
    }
  }
}

}  // namespace
}  // namespace oft::testing
