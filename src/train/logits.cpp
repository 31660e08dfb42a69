// `oft logits` helpers: token-id files and the logits of one forward pass (see logits.h).
#include "train/logits.h"

#include <cstring>
#include <sstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace oft {

Tensor read_token_ids(const std::string& path) {
  if (path.ends_with(".safetensors")) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    std::string name = "input_ids";
    if (!f.contains(name)) {
      OFT_CHECK(f.size() == 1, path, ": no tensor \"input_ids\" (found ", f.size(),
                " tensors); name the ids tensor input_ids");
      name = f.names()[0];
    }
    Tensor t;
    try {
      t = f.load_as(name, DType::I32);
    } catch (const Error& e) {
      fail(path, ": tensor ", name, " must hold integer token ids (", e.what(), ")");
    }
    OFT_CHECK(t.ndim() == 1 || t.ndim() == 2, path, ": tensor ", name, " has shape ",
              shape_str(t.shape()), "; token ids are [B, T] or [T]");
    if (t.ndim() == 1) t = t.view({1, t.dim(0)});
    return t;
  }
  const std::string text = read_file(path);
  std::vector<std::vector<double>> seqs;
  std::istringstream lines(text);
  std::string line;
  int line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    for (char& c : line)
      if (c == ',' || c == '\t' || c == '\r' || c == '[' || c == ']') c = ' ';
    std::istringstream in(line);
    std::vector<double> ids;
    std::string tok;
    while (in >> tok) {
      char* end = nullptr;
      const long long v = std::strtoll(tok.c_str(), &end, 10);
      OFT_CHECK(end && *end == '\0', path, " line ", line_no, ": \"", tok,
                "\" is not an integer token id");
      ids.push_back(double(v));
    }
    if (ids.empty()) continue;
    OFT_CHECK(seqs.empty() || ids.size() == seqs[0].size(), path, " line ", line_no, " has ",
              ids.size(), " ids but the first sequence has ", seqs[0].size(),
              ": every sequence of one file must have the same length (pad them yourself)");
    seqs.push_back(std::move(ids));
  }
  OFT_CHECK(!seqs.empty(), path, " holds no token ids; write one sequence per line");
  std::vector<double> flat;
  for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
  return Tensor::from_vector({int64_t(seqs.size()), int64_t(seqs[0].size())}, flat, DType::I32);
}

Tensor compute_logits(TransformerLM& model, const Tensor& ids) {
  OFT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::I32, "token ids must be [B, T] integers");
  const ModelConfig& mc = model.config();
  const int64_t B = ids.dim(0), T = ids.dim(1), V = mc.vocab_size;
  OFT_CHECK(T <= mc.max_seq_len, "sequences of ", T, " tokens exceed the model's position table "
            "(model.max_seq_len=", mc.max_seq_len, "): shorten them");
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    OFT_CHECK(p[i] >= 0 && p[i] < V, "token id ", p[i], " (sequence ", i / T, ", position ",
              i % T, ") is outside the vocabulary [0, ", V, ")");
  model.forward(ids.to(model.device()), Tensor());
  Tensor l = model.logits().to(Device::CPU);
  if (l.dtype() != DType::F32) l = l.cast(DType::F32);
  const int64_t Vp = l.dim(1);
  Tensor out = Tensor::empty({B, T, V}, DType::F32);
  for (int64_t r = 0; r < B * T; ++r)
    std::memcpy(out.data<float>() + r * V, l.data<float>() + r * Vp, sizeof(float) * size_t(V));
  return out;
}

}  // namespace oft
