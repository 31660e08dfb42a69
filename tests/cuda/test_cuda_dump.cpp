// Dumps whole tiny models for the independent PyTorch cross-check (scripts/torch/reference.py).
// Does nothing unless OFT_DUMP_DIR is set. Then, for each preset below, it builds the model on
// the CPU in f32 (and on the GPU in f32 and bf16 when one is usable) from the same initial
// weights and batch as the whole-model GPU-vs-CPU test (test_cuda_model.cpp), runs forward and
// backward once, and writes to $OFT_DUMP_DIR/<preset>/:
//   weights.safetensors          every parameter by its oft name (f32, the values all runs use)
//   batch.safetensors            tokens, targets [B, T] i32 (targets < 0 are ignored)
//   grads_cpu.safetensors        parameter gradients of the CPU f32 run
//   grads_cuda_f32.safetensors   the same on the GPU in f32           (only with a GPU)
//   grads_cuda_bf16.safetensors  the same on the GPU in bf16 (f32 masters, f32 gradients)
//   meta.json                    the resolved model configuration, parameter list and losses
// The reference re-implements the model from these alone, so a semantic error shared by both
// oft backends (which the GPU-vs-CPU test cannot see) shows up as a mismatch there.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "cuda/cuda_test_util.h"
#include "io/safetensors.h"
#include "model/attention.h"
#include "model/transformer.h"
#include "train/run_config.h"

namespace oft::testing {
namespace {

using Named = std::vector<std::pair<std::string, Tensor>>;

constexpr int64_t kB = 3, kT = 64, kVocab = 301;

struct DumpRun {
  double loss = 0;
  int64_t counted = 0;
  Named grads;  // CPU f32
};

// Initial weights exactly as test_cuda_model.cpp draws them: init_weights(7), then every
// non-matrix parameter (gains, biases, gate biases) perturbed by N(0, 0.1^2) from a stream
// seeded by its name, so that every path carries gradient. Returned as CPU f32 copies.
Named initial_weights(const ModelConfig& mc) {
  TransformerLM m(mc, DType::F32, Device::CPU, kT);
  m.init_weights(7);
  Named w;
  for (Param& p : m.params().all()) {
    if (!p.matrix) {
      Rng rng(std::hash<std::string>{}(p.name));
      std::vector<double> v = p.value.to_vector();
      for (auto& x : v) x += 0.1 * rng.normal();
      p.value.copy_from(Tensor::from_vector(p.value.shape(), v, p.value.dtype()));
    }
    w.emplace_back(p.name, p.value.cast(DType::F32).clone());
  }
  return w;
}

DumpRun run_model(const ModelConfig& mc, DType dt, Device dev, const Named& weights,
                  const Tensor& tok, const Tensor& tgt) {
  TransformerLM m(mc, dt, dev, kT);
  auto& ps = m.params().all();
  OFT_CHECK(ps.size() == weights.size(), "parameter count changed between models");
  size_t i = 0;
  for (Param& p : ps) {
    OFT_CHECK(p.name == weights[i].first, "parameter order changed: ", p.name);
    p.value.copy_from(weights[i].second.cast(p.value.dtype()).to(dev));  // f32 master
    ++i;
  }
  m.params().sync_compute();
  m.params().zero_grad();
  DumpRun r;
  r.loss = m.forward(tok.to(dev), tgt.to(dev));
  r.counted = m.counted_targets();
  m.backward(1.0);
  for (Param& p : ps) r.grads.emplace_back(p.name, p.grad.to(Device::CPU).cast(DType::F32).clone());
  return r;
}

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

std::string jnum(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

const char* prob_name(ops::ProbFn p) {
  switch (p) {
    case ops::ProbFn::Softmax: return "softmax";
    case ops::ProbFn::Clipped: return "clipped";
    case ops::ProbFn::Softmax1: return "softmax1";
  }
  return "?";
}

void write_meta(const std::string& path, const std::string& preset, const ModelConfig& mc,
                const Named& weights, const std::map<std::string, DumpRun>& runs) {
  // The attention spec as the model resolves it (clipped softmax via `alpha` depends on T).
  ParamStore scratch;
  const Attention probe(scratch, "probe", mc, kT, mc.causal(), DType::F32, Device::CPU);
  const ops::AttentionSpec& s = probe.spec();
  std::ostringstream j;
  j << "{\n  \"preset\": " << jstr(preset) << ",\n  \"batch\": " << kB << ",\n  \"seq_len\": " << kT
    << ",\n  \"model\": {\n"
    << "    \"arch\": " << jstr(mc.arch) << ",\n"
    << "    \"n_layer\": " << mc.n_layer << ",\n"
    << "    \"d_model\": " << mc.d_model << ",\n"
    << "    \"n_head\": " << mc.n_head << ",\n"
    << "    \"d_ff\": " << mc.d_ff << ",\n"
    << "    \"vocab_size\": " << mc.vocab_size << ",\n"
    << "    \"max_seq_len\": " << mc.max_seq_len << ",\n"
    << "    \"activation\": " << jstr(mc.activation) << ",\n"
    << "    \"norm\": " << jstr(mc.norm) << ",\n"
    << "    \"norm_eps\": " << jnum(mc.norm_eps) << ",\n"
    << "    \"final_norm\": " << (mc.final_norm ? "true" : "false") << ",\n"
    << "    \"bias\": " << (mc.bias ? "true" : "false") << ",\n"
    << "    \"block\": " << jstr(mc.block) << ",\n"
    << "    \"qk_norm\": " << (mc.qk_norm ? "true" : "false") << ",\n"
    << "    \"branch_gain\": " << jnum(mc.branch_gain) << ",\n"
    << "    \"gains_trainable\": " << (mc.gains_trainable ? "true" : "false") << ",\n"
    << "    \"attn_softmax\": " << jstr(mc.attn_softmax) << ",\n"
    << "    \"alpha\": " << jnum(mc.alpha) << ",\n"
    << "    \"attn_prob\": " << jstr(prob_name(s.prob)) << ",\n"
    << "    \"attn_gamma\": " << jnum(s.gamma) << ",\n"
    << "    \"attn_zeta\": " << jnum(s.zeta) << ",\n"
    << "    \"causal\": " << (s.causal ? "true" : "false") << ",\n"
    << "    \"attn_gate_type\": " << jstr(mc.attn_gate_type) << ",\n"
    << "    \"attn_gate_init\": " << jnum(mc.attn_gate_init) << ",\n"
    << "    \"attn_gate_mlp\": " << (mc.attn_gate_mlp ? "true" : "false") << ",\n"
    << "    \"attn_gate_hidden\": " << mc.attn_gate_hidden << ",\n"
    << "    \"attn_gate_linear_all_features\": "
    << (mc.attn_gate_linear_all_features ? "true" : "false") << ",\n"
    << "    \"objective\": " << jstr(mc.objective) << ",\n"
    << "    \"type_vocab_size\": " << mc.type_vocab_size << ",\n"
    << "    \"embed_norm\": " << (mc.embed_norm ? "true" : "false") << "\n  },\n";
  j << "  \"params\": [\n";
  for (size_t i = 0; i < weights.size(); ++i) {
    j << "    {\"name\": " << jstr(weights[i].first) << ", \"shape\": [";
    const Shape& sh = weights[i].second.shape();
    for (size_t d = 0; d < sh.size(); ++d) j << (d ? ", " : "") << sh[d];
    j << "]}" << (i + 1 < weights.size() ? "," : "") << "\n";
  }
  j << "  ],\n  \"losses\": {";
  size_t k = 0;
  for (const auto& [src, r] : runs) j << (k++ ? ", " : "") << jstr(src) << ": " << jnum(r.loss);
  j << "},\n  \"counted_targets\": " << runs.begin()->second.counted << "\n}\n";
  std::ofstream f(path);
  f << j.str();
  OFT_CHECK(f.good(), "cannot write ", path);
}

TEST(TorchDump, WriteModelsForTheReference) {
  const char* env = std::getenv("OFT_DUMP_DIR");
  if (!env || !*env) GTEST_SKIP() << "set OFT_DUMP_DIR to write the models for scripts/torch/reference.py";
  const std::string root = env;
  // A fixed batch: tokens and targets uniform in [0, V), every 7th target (from the 4th) ignored.
  Rng rng(20240607);
  std::vector<double> tv(kB * kT), gv(kB * kT);
  for (auto& x : tv) x = double(rng.below(kVocab));
  for (size_t i = 0; i < gv.size(); ++i) gv[i] = i % 7 == 3 ? -1.0 : double(rng.below(kVocab));
  const Tensor tok = Tensor::from_vector({kB, kT}, tv, DType::I32);
  const Tensor tgt = Tensor::from_vector({kB, kT}, gv, DType::I32);
  const bool gpu = ops::cuda_available();
  // name (the dump's directory), preset, extra override; the "_d64" cases have the head width
  // of the full-size models (64), which runs the D = 64 attention kernels (attention_wgmma.cu's
  // Hopper forward for softmax on sm_90).
  struct Case { std::string name, preset, extra; };
  for (const Case& c : {Case{"tiny_opt_125m_vanilla", "tiny_opt_125m_vanilla", ""},
                        Case{"tiny_opt_125m_clipped_softmax", "tiny_opt_125m_clipped_softmax", ""},
                        Case{"tiny_opt_125m_gated_attention", "tiny_opt_125m_gated_attention", ""},
                        Case{"tiny_gpt2_op", "tiny_gpt2_op", ""},
                        Case{"tiny_opt_125m_vanilla_d64", "tiny_opt_125m_vanilla", "model.n_head=2"},
                        Case{"tiny_opt_125m_clipped_softmax_d64", "tiny_opt_125m_clipped_softmax",
                             "model.n_head=2"}}) {
    RunConfig cfg;
    std::vector<std::string> overrides{"model.n_layer=2", "model.vocab_size=301",
                                       "data.seq_len=64"};
    if (!c.extra.empty()) overrides.push_back(c.extra);
    cfg.load(c.preset, overrides);
    const ModelConfig mc = cfg.model;
    const std::string dir = root + "/" + c.name;
    std::filesystem::create_directories(dir);
    const Named w = initial_weights(mc);
    std::map<std::string, DumpRun> runs;
    runs["cpu"] = run_model(mc, DType::F32, Device::CPU, w, tok, tgt);
    if (gpu) {
      runs["cuda_f32"] = run_model(mc, DType::F32, Device::CUDA, w, tok, tgt);
      runs["cuda_bf16"] = run_model(mc, DType::BF16, Device::CUDA, w, tok, tgt);
    }
    save_safetensors(dir + "/weights.safetensors", w);
    save_safetensors(dir + "/batch.safetensors", {{"tokens", tok}, {"targets", tgt}});
    for (const auto& [src, r] : runs) {
      EXPECT_TRUE(std::isfinite(r.loss)) << c.name << " " << src;
      save_safetensors(dir + "/grads_" + src + ".safetensors", r.grads);
    }
    write_meta(dir + "/meta.json", c.name, mc, w, runs);
    std::printf("[dump %s] %zu tensors, loss", c.name.c_str(), w.size());
    for (const auto& [src, r] : runs) std::printf(" %s %.6f", src.c_str(), r.loss);
    std::printf(" -> %s\n", dir.c_str());
  }
}

}  // namespace
}  // namespace oft::testing
