// The profiling wrapper backend (see profiler.h). Each op call on the GPU records a timestamp
// before and after on the op stream (stop() synchronises once and sums the intervals per op
// name); each op on the CPU, whose ops return when done, is timed with the host clock.
#include "ops/profiler.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>

namespace oft::ops {
namespace {

struct Interval {
  const char* name;
  int begin, end;   // device marks (the CUDA wrapper)
  double host_ms;   // the host clock's interval (the CPU wrapper, whose ops are synchronous)
};

class ProfilingBackend final : public Backend {
 public:
  // host_clock: time ops with the host clock (the CPU backend) instead of device marks.
  ProfilingBackend(Backend& inner, bool host_clock) : inner_(inner), host_clock_(host_clock) {}
  const char* name() const override { return inner_.name(); }
  std::vector<Interval> intervals;

  // Nested ops (a backend op calling another) are attributed to the outermost one.
  struct Scope {
    ProfilingBackend* p;
    const char* name;
    int begin = -1;
    std::chrono::steady_clock::time_point t0;
    Scope(ProfilingBackend* pb, const char* n) : p(pb), name(n) {
      if (p->depth_++ != 0) return;
      if (p->host_clock_)
        t0 = std::chrono::steady_clock::now();
      else
        begin = device_mark();
    }
    ~Scope() {
      if (--p->depth_ != 0) return;
      if (p->host_clock_)
        p->intervals.push_back(
            {name, -1, -1,
             std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                 .count()});
      else
        p->intervals.push_back({name, begin, device_mark(), 0.0});
    }
  };

  void fill(Tensor& x, double value) override {
    Scope scope_(this, "fill");
    inner_.fill(x, value);
  }
  void add(Tensor& out, const Tensor& a, const Tensor& b) override {
    Scope scope_(this, "add");
    inner_.add(out, a, b);
  }
  void add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                  double beta) override {
    Scope scope_(this, "add_scaled");
    inner_.add_scaled(out, a, alpha, b, beta);
  }
  void axpy(Tensor& y, const Tensor& x, double alpha) override {
    Scope scope_(this, "axpy");
    inner_.axpy(y, x, alpha);
  }
  void scale(Tensor& x, double s) override {
    Scope scope_(this, "scale");
    inner_.scale(x, s);
  }
  double dot(const Tensor& a, const Tensor& b) override {
    Scope scope_(this, "dot");
    return inner_.dot(a, b);
  }
  void sum_squares_into(Tensor& acc, const Tensor& x) override {
    Scope scope_(this, "sum_squares_into");
    inner_.sum_squares_into(acc, x);
  }
  void matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB, double alpha, double beta) override {
    Scope scope_(this, "matmul");
    inner_.matmul(C, A, transA, B, transB, alpha, beta);
  }
  void add_bias(Tensor& y, const Tensor& bias) override {
    Scope scope_(this, "add_bias");
    inner_.add_bias(y, bias);
  }
  void bias_grad(Tensor& dbias, const Tensor& dy) override {
    Scope scope_(this, "bias_grad");
    inner_.bias_grad(dbias, dy);
  }
  void linear_wgrad_bias_column(Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x_ext, double beta) override {
    Scope scope_(this, "linear_wgrad_bias_column");
    inner_.linear_wgrad_bias_column(dw, db, dy, x_ext, beta);
  }
  void layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w, const Tensor& b, double eps) override {
    Scope scope_(this, "layernorm_fwd");
    inner_.layernorm_fwd(y, mean, rstd, x, w, b, eps);
  }
  void layernorm_gate_fwd(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& gate, Tensor& logits, const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& gw, const Tensor& gb) override {
    Scope scope_(this, "layernorm_gate_fwd");
    inner_.layernorm_gate_fwd(y, mean, rstd, gate, logits, x, w, b, eps, gw, gb);
  }
  void layernorm_gate_bwd(Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgw, Tensor& dgb, const Tensor& dy, const Tensor& dgate, const Tensor& logits, const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gw, const Tensor& mean, const Tensor& rstd, bool accumulate, Tensor* dsum) override {
    Scope scope_(this, "layernorm_gate_bwd");
    inner_.layernorm_gate_bwd(dx, dw, db, dgw, dgb, dy, dgate, logits, y, x, w, b, gw, mean, rstd, accumulate, dsum);
  }
  void layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, bool accumulate, Tensor* dsum) override {
    Scope scope_(this, "layernorm_bwd");
    inner_.layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, accumulate, dsum);
  }
  void rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w, double eps) override {
    Scope scope_(this, "rmsnorm_fwd");
    inner_.rmsnorm_fwd(y, inv, x, w, eps);
  }
  void rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& inv, bool accumulate, Tensor* dsum) override {
    Scope scope_(this, "rmsnorm_bwd");
    inner_.rmsnorm_bwd(dx, dw, dy, x, w, inv, accumulate, dsum);
  }
  void activation_fwd(Tensor& y, const Tensor& x, Activation a) override {
    Scope scope_(this, "activation_fwd");
    inner_.activation_fwd(y, x, a);
  }
  void activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) override {
    Scope scope_(this, "activation_bwd");
    inner_.activation_bwd(dx, dy, x, a);
  }
  void embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int64_t T, int64_t pos_offset) override {
    Scope scope_(this, "embedding_fwd");
    inner_.embedding_fwd(out, tokens, wte, wpe, T, pos_offset);
  }
  void embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout, const Tensor& tokens, int64_t T, int64_t pos_offset) override {
    Scope scope_(this, "embedding_bwd");
    inner_.embedding_bwd(dwte, dwpe, dout, tokens, T, pos_offset);
  }
  void attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv, const Tensor& key_mask, int64_t B, int64_t T, const AttentionSpec& spec) override {
    Scope scope_(this, "attention_fwd");
    inner_.attention_fwd(out, saved, qkv, key_mask, B, T, spec);
  }
  void attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& saved, const Tensor& key_mask, int64_t B, int64_t T, const AttentionSpec& spec, Tensor* dsum) override {
    Scope scope_(this, "attention_bwd");
    inner_.attention_bwd(dqkv, dout, qkv, saved, key_mask, B, T, spec, dsum);
  }
  bool gate_in_epilogue(const AttentionSpec& spec, DType dt) const override {
    return inner_.gate_in_epilogue(spec, dt);
  }
  void grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) override {
    Scope scope_(this, "grouped_linear_fwd");
    inner_.grouped_linear_fwd(y, x, w, b);
  }
  void grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dx) override {
    Scope scope_(this, "grouped_linear_bwd");
    inner_.grouped_linear_bwd(dx, dw, db, dy, x, w, accumulate_dx);
  }
  void grouped_linear_act_fwd(Tensor& act, Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, Activation a) override {
    Scope scope_(this, "grouped_linear_act_fwd");
    inner_.grouped_linear_act_fwd(act, y, x, w, b, a);
  }
  void grouped_linear_act_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dact, const Tensor& y, const Tensor& x, const Tensor& w, bool accumulate_dx, Activation a) override {
    Scope scope_(this, "grouped_linear_act_bwd");
    inner_.grouped_linear_act_bwd(dx, dw, db, dact, y, x, w, accumulate_dx, a);
  }
  void head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate, int64_t rows_per_gate) override {
    Scope scope_(this, "head_gate_fwd");
    inner_.head_gate_fwd(out, x, gate, rows_per_gate);
  }
  void head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x, const Tensor& gate, int64_t rows_per_gate) override {
    Scope scope_(this, "head_gate_bwd");
    inner_.head_gate_bwd(dx, dgate, dout, x, gate, rows_per_gate);
  }
  void group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) override {
    Scope scope_(this, "group_mean_fwd");
    inner_.group_mean_fwd(y, x, k);
  }
  void group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) override {
    Scope scope_(this, "group_mean_bwd");
    inner_.group_mean_bwd(dx, dy, k);
  }
  void qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq, const Tensor& wk, int64_t H, double eps) override {
    Scope scope_(this, "qk_norm_fwd");
    inner_.qk_norm_fwd(out, inv, qkv, wq, wk, H, eps);
  }
  void qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout, const Tensor& qkv, const Tensor& wq, const Tensor& wk, const Tensor& inv, int64_t H) override {
    Scope scope_(this, "qk_norm_bwd");
    inner_.qk_norm_bwd(dqkv, dwq, dwk, dout, qkv, wq, wk, inv, H);
  }
  void causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) override {
    Scope scope_(this, "causal_mean_fwd");
    inner_.causal_mean_fwd(y, x, T);
  }
  void causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) override {
    Scope scope_(this, "causal_mean_bwd");
    inner_.causal_mean_bwd(dx, dy, T);
  }
  void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t ncols, bool accumulate) override {
    Scope scope_(this, "copy_columns");
    inner_.copy_columns(dst, dst_col, src, src_col, ncols, accumulate);
  }
  void cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets,
                         int64_t vocab) override {
    Scope scope_(this, "cross_entropy_fwd");
    inner_.cross_entropy_fwd(losses, logits, targets, vocab);
  }
  void cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                         double scale, int64_t vocab) override {
    Scope scope_(this, "cross_entropy_bwd");
    inner_.cross_entropy_bwd(dlogits, logits, targets, scale, vocab);
  }
  void cross_entropy_fwd_grad(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                              const Tensor& targets, int64_t vocab) override {
    Scope scope_(this, "cross_entropy_fwd_grad");
    inner_.cross_entropy_fwd_grad(losses, dlogits, logits, targets, vocab);
  }
  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& h) override {
    Scope scope_(this, "adamw");
    inner_.adamw(param, grad, m, v, h);
  }
  void fake_quant(Tensor& x, const FakeQuant& q) override {
    Scope scope_(this, "fake_quant");
    inner_.fake_quant(x, q);
  }
  ValueRange value_range(const Tensor& x) override {
    Scope scope_(this, "value_range");
    return inner_.value_range(x);
  }
  void row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                   double eps) override {
    Scope scope_(this, "row_moments");
    inner_.row_moments(out, x, row_len, kurtosis, eps);
  }
  HiddenStateSums hidden_state_sums(const Tensor& h, int64_t B, int64_t T, unsigned parts,
                                    bool centre) override {
    Scope scope_(this, "hidden_state_sums");
    return inner_.hidden_state_sums(h, B, T, parts, centre);
  }
  void convert(Tensor& dst, const Tensor& src) override {
    Scope scope_(this, "convert");
    inner_.convert(dst, src);
  }
  void gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override {
    Scope scope_(this, "gather_rows");
    inner_.gather_rows(dst, src, idx);
  }
  void scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override {
    Scope scope_(this, "scatter_rows");
    inner_.scatter_rows(dst, src, idx);
  }
  void linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) override {
    Scope scope_(this, "linear_fwd");
    inner_.linear_fwd(y, x, w, b);
  }
  void linear_residual_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& res) override {
    Scope scope_(this, "linear_residual_fwd");
    inner_.linear_residual_fwd(y, x, w, b, res);
  }
  void linear_act_fwd(Tensor& act, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b, Activation a) override {
    Scope scope_(this, "linear_act_fwd");
    inner_.linear_act_fwd(act, pre, x, w, b, a);
  }
  void linear_act_bwd_dx(Tensor& dpre, const Tensor& dout, const Tensor& w, const Tensor& saved, Activation a, Tensor* dsum) override {
    Scope scope_(this, "linear_act_bwd_dx");
    inner_.linear_act_bwd_dx(dpre, dout, w, saved, a, dsum);
  }
  void clip_from_stats(Tensor& stats, double max_norm) override {
    Scope scope_(this, "clip_from_stats");
    inner_.clip_from_stats(stats, max_norm);
  }
  void adamw_multi(const std::vector<AdamWTensors>& items, const AdamWStep& h) override {
    Scope scope_(this, "adamw_multi");
    inner_.adamw_multi(items, h);
  }
  void sum_squares_multi(Tensor& acc, const std::vector<const Tensor*>& xs) override {
    Scope scope_(this, "sum_squares_multi");
    inner_.sum_squares_multi(acc, xs);
  }
  void zero_multi(const std::vector<Tensor*>& xs) override {
    Scope scope_(this, "zero_multi");
    inner_.zero_multi(xs);
  }

 private:
  Backend& inner_;
  bool host_clock_;
  int depth_ = 0;
};

bool g_active = false;
std::unique_ptr<ProfilingBackend> g_wrap[2];

}  // namespace

void Profiler::start() {
  device_marks_reset();
  g_wrap[0] = std::make_unique<ProfilingBackend>(cpu_backend(), true);
  g_wrap[1].reset();
  if (cuda_available()) {
    g_active = false;  // ask for the real CUDA backend, not a wrapper
    g_wrap[1] = std::make_unique<ProfilingBackend>(backend(Device::CUDA), false);
  }
  g_active = true;
}

std::vector<ProfileRow> Profiler::stop() {
  g_active = false;
  device_synchronize();
  std::map<std::string, ProfileRow> by_name;
  for (auto& w : g_wrap) {
    if (!w) continue;
    for (const Interval& iv : w->intervals) {
      ProfileRow& r = by_name[iv.name];
      r.name = iv.name;
      r.total_ms += iv.begin < 0 ? iv.host_ms : device_elapsed_ms(iv.begin, iv.end);
      ++r.calls;
    }
  }
  std::vector<ProfileRow> rows;
  for (auto& [n, r] : by_name) rows.push_back(r);
  std::sort(rows.begin(), rows.end(),
            [](const ProfileRow& a, const ProfileRow& b) { return a.total_ms > b.total_ms; });
  g_wrap[0].reset();
  g_wrap[1].reset();
  device_marks_reset();
  return rows;
}

Backend* Profiler::active(Device d) {
  if (!g_active) return nullptr;
  return g_wrap[d == Device::CPU ? 0 : 1].get();
}

}  // namespace oft::ops
