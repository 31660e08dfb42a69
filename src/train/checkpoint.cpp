// Checkpoint writing, discovery, verification and loading (see checkpoint.h).
#include "train/checkpoint.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace oft {

namespace {
constexpr const char* kFiles[] = {"model.safetensors", "optimizer.safetensors"};

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::vector<std::pair<std::string, Tensor>> host_copies(
    const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<std::pair<std::string, Tensor>> r;
  for (const auto& [n, t] : named) r.emplace_back(n, t.to(Device::CPU));
  return r;
}

void load_into(const SafetensorsFile& f, const std::string& name, Tensor& dst,
               const std::string& ckpt) {
  OFT_CHECK(f.contains(name), ckpt, ": tensor '", name,
            "' is missing: the checkpoint was written by a model with a different configuration");
  const auto& info = f.info(name);
  OFT_CHECK(info.shape == dst.shape(), ckpt, ": tensor '", name, "' has shape ",
            shape_str(info.shape), " but the model expects ", shape_str(dst.shape()),
            ": use the model.* settings of the run that wrote it");
  dst.copy_from(f.load_as(name, dst.dtype()).to(dst.device()));
}
}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, TransformerLM& model,
                            const AdamW* opt, nlohmann::json state, int64_t keep) {
  return save_checkpoint(run_dir, step, model,
                         opt ? opt->state_tensors() : std::vector<std::pair<std::string, Tensor>>{},
                         std::move(state), keep);
}

std::string save_checkpoint(const std::string& run_dir, int64_t step, TransformerLM& model,
                            const std::vector<std::pair<std::string, Tensor>>& opt_state,
                            nlohmann::json state, int64_t keep) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = step_dir_name(step);
  const fs::path tmp = root / (name + ".tmp" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    std::vector<std::pair<std::string, Tensor>> weights;
    for (const Param& p : model.params().all()) weights.emplace_back(p.name, p.value);
    const std::map<std::string, std::string> meta{{"format", "oft"}, {"step", std::to_string(step)}};
    save_safetensors((tmp / kFiles[0]).string(), host_copies(weights), meta);
    save_safetensors((tmp / kFiles[1]).string(), host_copies(opt_state), meta);
    state["format"] = "oft-checkpoint";
    state["version"] = 1;
    state["step"] = step;
    for (const char* f : kFiles) {
      const fs::path p = tmp / f;
      state["files"][f] = {{"bytes", fs::file_size(p)}, {"crc32", crc32_hex(crc32_file(p))}};
    }
    write_file_atomic((tmp / "state.json").string(), state.dump(2) + "\n");
    commit_directory_atomic(tmp.string(), (root / name).string());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  write_file_atomic((root / "latest").string(), name + "\n");
  // Prune the oldest step directories beyond `keep`.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("step_") && n.find(".tmp") == std::string::npos)
      steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i)
    if (steps[i] != name) fs::remove_all(root / steps[i]);
  return (root / name).string();
}

std::string find_checkpoint(const std::string& path) {
  const fs::path p(path);
  OFT_CHECK(fs::exists(p), path, ": no such run directory or checkpoint");
  if (fs::exists(p / "state.json")) return p.string();
  for (const fs::path& root : {p / "checkpoints", p}) {
    if (fs::exists(root / "latest")) {
      std::string name = read_file((root / "latest").string());
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
      const fs::path c = root / name;
      OFT_CHECK(fs::exists(c / "state.json"), (root / "latest").string(), " names '", name,
                "', which is missing or incomplete: point at an existing step_* directory");
      return c.string();
    }
  }
  fail(path, ": no checkpoint found (expected a run directory with checkpoints/latest, or a "
             "checkpoints/step_* directory holding state.json)");
}

std::string run_dir_of(const std::string& ckpt) {
  const fs::path c(ckpt);
  if (c.parent_path().filename() == "checkpoints") return c.parent_path().parent_path().string();
  return c.string();
}

nlohmann::json read_checkpoint_state(const std::string& dir) {
  const fs::path d(dir);
  const std::string state_path = (d / "state.json").string();
  nlohmann::json s;
  try {
    s = nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, ": not valid JSON (", e.what(), "): the checkpoint is damaged, use an "
                     "earlier one");
  }
  OFT_CHECK(s.value("format", "") == "oft-checkpoint", state_path,
            ": not an oft checkpoint state file");
  OFT_CHECK(s.value("version", 0) == 1, state_path, ": unsupported checkpoint version ",
            s.value("version", 0), " (this oft reads version 1)");
  for (const char* f : kFiles) {
    const fs::path p = d / f;
    OFT_CHECK(s.contains("files") && s["files"].contains(f), state_path, ": no entry for ", f);
    OFT_CHECK(fs::exists(p), p.string(), ": missing; the checkpoint is incomplete");
    const uint64_t want = s["files"][f]["bytes"].get<uint64_t>();
    OFT_CHECK(fs::file_size(p) == want, p.string(), ": ", fs::file_size(p), " bytes but ", want,
              " were written (truncated or replaced): use an earlier checkpoint");
    const std::string crc = crc32_hex(crc32_file(p.string()));
    OFT_CHECK(crc == s["files"][f]["crc32"].get<std::string>(), p.string(),
              ": checksum mismatch (corrupted): use an earlier checkpoint");
  }
  return s;
}

void load_model_weights(const std::string& dir, TransformerLM& model) {
  const std::string path = (fs::path(dir) / kFiles[0]).string();
  const SafetensorsFile f = SafetensorsFile::open(path);
  for (Param& p : model.params().all()) load_into(f, p.name, p.value, path);
  model.params().sync_compute();
  OFT_CHECK(f.size() == model.params().all().size(), path, ": holds ", f.size(),
            " tensors but the model has ", model.params().all().size(),
            ": use the model.* settings of the run that wrote it");
}

void load_optimizer_state(const std::string& dir, AdamW& opt) {
  const std::string path = (fs::path(dir) / kFiles[1]).string();
  const SafetensorsFile f = SafetensorsFile::open(path);
  if (!opt.sharded()) {
    for (auto& [name, t] : opt.state_tensors()) load_into(f, name, t, path);
    return;
  }
  for (size_t i = 0; i < opt.ranges().size(); ++i) {
    const ParamRange& r = opt.ranges()[i];
    const Param& p = opt.params().all()[r.param];
    for (const char* kind : {"m.", "v."}) {
      Tensor full = Tensor::empty(p.value.shape(), p.value.dtype());
      load_into(f, kind + p.name, full, path);
      (kind[0] == 'm' ? opt.m(i) : opt.v(i)).copy_from(range_view(full, r));
    }
  }
}

}  // namespace oft
