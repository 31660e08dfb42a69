// `oft data prepare`: input discovery, document splitting, the deterministic train/val split,
// parallel (order-preserving) tokenization and shard + meta.json writing. See prepare.h.
//
// Two passes over the files: pass 1 reads and validates them (binary / UTF-8), splits documents
// and decides every document's side; pass 2 re-reads them in batches, tokenizes a batch's
// documents in parallel and appends the results in order. Memory stays bounded by one batch.
#include "data/prepare.h"

#include <fcntl.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/error.h"
#include "data/shard.h"

namespace oft {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr size_t kBatchBytes = 32u << 20;  // text tokenized per parallel batch

struct Source {
  std::string path;  // as discovered (input prefix + relative part)
  std::string rel;   // stable name used by the split hash
};

struct Span {
  size_t off, len;
};

struct ScannedFile {
  size_t src;               // index into the sources
  size_t bytes;             // bytes used (after max_bytes)
  std::vector<Span> docs;   // documents inside those bytes
  size_t first_doc;         // global index of docs[0]
};

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

bool is_hidden(const fs::path& p) {
  const std::string n = p.filename().string();
  return n.size() > 1 && n[0] == '.' && n != "..";
}

bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string ext_list(const std::vector<std::string>& exts) {
  std::string s;
  for (const auto& e : exts) s += (s.empty() ? "" : " ") + e;
  return s;
}

// Recursively adds the regular files under `dir` (hidden entries and `skip_dir` excluded) with
// rel = path relative to `base`.
void walk_dir(const fs::path& dir, const fs::path& base, const std::vector<std::string>& exts,
              const fs::path& skip_dir, std::vector<Source>& out) {
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  OFT_CHECK(!ec, "cannot read directory '", dir.string(), "': ", ec.message(),
            ": check its permissions");
  for (; it != end; it.increment(ec)) {
    OFT_CHECK(!ec, "cannot read directory under '", dir.string(), "': ", ec.message(),
              ": check its permissions");
    const fs::path& p = it->path();
    if (is_hidden(p)) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory(ec)) {
      if (!skip_dir.empty() && fs::weakly_canonical(p, ec) == skip_dir)
        it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec)) continue;
    if (!exts.empty() &&
        std::find(exts.begin(), exts.end(), p.extension().string()) == exts.end())
      continue;
    out.push_back({p.string(), p.lexically_relative(base).generic_string()});
  }
}

// The literal directory prefix of a glob pattern ("data/*/x.txt" -> "data").
fs::path glob_base(const std::string& pattern) {
  fs::path base;
  for (const auto& part : fs::path(pattern).parent_path()) {
    if (has_glob_chars(part.string())) break;
    base /= part;
  }
  return base.empty() ? fs::path(".") : base;
}

std::vector<Source> collect_sources(const PrepareOptions& opt, const fs::path& skip_dir) {
  std::vector<std::string> exts;
  for (const auto& e : opt.extensions) exts.push_back(!e.empty() && e[0] != '.' ? "." + e : e);
  std::vector<Source> out;
  for (const auto& in : opt.inputs) {
    const size_t before = out.size();
    std::error_code ec;
    const fs::path p(in);
    if (fs::is_directory(p, ec)) {
      walk_dir(p, p, exts, skip_dir, out);
    } else if (fs::exists(p, ec)) {
      OFT_CHECK(fs::is_regular_file(p, ec), "input '", in,
                "' is not a regular file or directory: check the path");
      out.push_back({p.string(), p.filename().string()});
    } else if (has_glob_chars(in)) {
      glob_t g{};
      const int rc = ::glob(in.c_str(), GLOB_TILDE, nullptr, &g);
      std::vector<std::string> matches;
      if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
      ::globfree(&g);
      const fs::path base = glob_base(in).lexically_normal();
      for (const auto& m : matches) {
        const fs::path mp = fs::path(m).lexically_normal();
        if (fs::is_directory(mp, ec))
          walk_dir(mp, base, exts, skip_dir, out);
        else if (fs::is_regular_file(mp, ec))
          out.push_back({mp.string(), mp.lexically_relative(base).generic_string()});
      }
    }
    OFT_CHECK(out.size() > before, "no input files matched '", in, "'",
              exts.empty() ? std::string() : " with extensions " + ext_list(exts),
              ": check the path");
  }
  std::sort(out.begin(), out.end(),
            [](const Source& a, const Source& b) { return a.path < b.path; });
  std::set<std::string> seen;  // the same file reached twice (overlapping inputs) counts once
  std::vector<Source> uniq;
  for (auto& s : out) {
    std::error_code ec;
    std::string key = fs::weakly_canonical(s.path, ec).string();
    if (ec) key = s.path;
    if (seen.insert(key).second) uniq.push_back(std::move(s));
  }
  return uniq;
}

// Reads up to `limit` bytes of a file.
std::string read_file(const std::string& path, size_t limit) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  OFT_CHECK(fd >= 0, "cannot read input '", path, "': ", std::strerror(errno),
            ": check that it exists and is readable");
  std::string data;
  char buf[1 << 16];
  while (data.size() < limit) {
    const ssize_t r = ::read(fd, buf, std::min(sizeof buf, limit - data.size()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      ::close(fd);
      fail("cannot read input '", path, "': ", std::strerror(e), ": check the file");
    }
    if (r == 0) break;
    data.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return data;
}

// Offset of the first byte that breaks UTF-8 (overlongs, surrogates and > U+10FFFF rejected),
// or npos when the text is valid.
size_t utf8_error(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return std::string::npos;
}

// Length of `s` cut back so that it does not end inside a multi-byte UTF-8 sequence.
size_t utf8_cut(std::string_view s) {
  size_t i = s.size();
  size_t back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i == 0) return s.size();
  const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  const size_t len = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return (i - 1) + len <= s.size() ? s.size() : i - 1;
}

bool all_space(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return is_space(static_cast<unsigned char>(c)); });
}

std::vector<Span> split_documents(std::string_view text, bool blank_lines) {
  std::vector<Span> docs;
  if (!blank_lines) {
    if (!all_space(text)) docs.push_back({0, text.size()});
    return docs;
  }
  size_t pos = 0, start = 0, end = 0;  // current paragraph [start, end)
  bool in_para = false;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    const std::string_view line = text.substr(pos, line_end - pos);
    if (all_space(line)) {
      if (in_para) docs.push_back({start, end - start});
      in_para = false;
    } else {
      if (!in_para) start = pos;
      in_para = true;
      end = line_end;
      if (end > start && text[end - 1] == '\r') --end;
    }
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
  }
  if (in_para) docs.push_back({start, end - start});
  return docs;
}

// "\r prepare: 12.3/45.6 MB (27%)  8.1 MB/s  ETA 0:04" at most ~4 times a second.
class Progress {
 public:
  Progress(bool on, uint64_t total) : on_(on), total_(total), t0_(Clock::now()), last_(t0_) {}
  void tick(uint64_t done, bool final = false) {
    if (!on_) return;
    std::unique_lock<std::mutex> lk(mu_, std::defer_lock);
    if (final) lk.lock();
    else if (!lk.try_lock()) return;  // another thread is printing
    const auto now = Clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    const double secs = std::max(1e-9, std::chrono::duration<double>(now - t0_).count());
    const double mb = done / 1e6, rate = mb / secs;
    const double eta = rate > 0 ? (total_ - std::min(done, total_)) / 1e6 / rate : 0.0;
    const int e = static_cast<int>(std::lround(eta));
    std::fprintf(stderr, "\rprepare: %.1f/%.1f MB (%3d%%)  %.1f MB/s  ETA %d:%02d   ", mb,
                 total_ / 1e6, total_ ? static_cast<int>(100.0 * done / total_) : 100, rate,
                 e / 60, e % 60);
    if (final) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool on_;
  uint64_t total_;
  Clock::time_point t0_, last_;
  std::mutex mu_;
};

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    OFT_CHECK(f.good(), "cannot write '", tmp, "': check the output directory's permissions");
    f << text;
    f.flush();
    OFT_CHECK(f.good(), "cannot write '", tmp, "': free disk space or choose another --out");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail("cannot rename '", tmp, "' to '", path, "': check the output directory's permissions");
  }
}

}  // namespace

uint64_t document_hash(const std::string& rel_path, uint64_t doc_index) {
  const std::string key = rel_path + "#" + std::to_string(doc_index);
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  // Avalanche (murmur3 fmix64): FNV's high bits barely depend on the last bytes of similar keys.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

double hash_fraction(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

PrepareResult prepare_corpus(const PrepareOptions& opt, const Tokenizer& tok) {
  const auto t_start = Clock::now();
  OFT_CHECK(!opt.inputs.empty(), "data prepare: no inputs given: pass one or more files, "
            "directories or glob patterns");
  OFT_CHECK(!opt.out_dir.empty(), "data prepare: no output directory given: pass --out DIR");
  OFT_CHECK(opt.val_fraction >= 0.0 && opt.val_fraction <= 0.5,
            "data prepare: val_fraction must be in [0, 0.5] (got ", opt.val_fraction,
            "): pass e.g. --val-fraction 0.05");
  OFT_CHECK(opt.doc_split == "file" || opt.doc_split == "blank_lines",
            "data prepare: unknown doc_split '", opt.doc_split, "': use 'file' or 'blank_lines'");
  const int vocab = tok.vocab_size();
  const int32_t eot = tok.eot_id();
  OFT_CHECK(vocab > 0 && eot >= 0 && eot < vocab, "tokenizer '", tok.name(), "': eot_id ", eot,
            " is outside its vocabulary of ", vocab, ": check the tokenizer files");
  const int32_t bos = tok.bos_id();  // -1: documents are not prefixed
  OFT_CHECK(bos < vocab, "tokenizer '", tok.name(), "': bos_id ", bos,
            " is outside its vocabulary of ", vocab, ": check the tokenizer files");
  const bool blank_lines = opt.doc_split == "blank_lines";
  const size_t budget0 = opt.max_bytes ? opt.max_bytes : SIZE_MAX;

  std::error_code ec;
  const fs::path out_dir(opt.out_dir);
  const fs::path out_canon = fs::weakly_canonical(out_dir, ec);
  const std::vector<Source> sources = collect_sources(opt, ec ? fs::path() : out_canon);

  fs::create_directories(out_dir, ec);
  OFT_CHECK(fs::is_directory(out_dir), "cannot create output directory '", opt.out_dir, "'",
            ec ? ": " + ec.message() : std::string(), ": choose a writable --out directory");

  PrepareResult res;
  // ---- pass 1: read, validate, split into documents
  std::vector<ScannedFile> files;
  std::vector<uint64_t> doc_hash;
  size_t budget = budget0;
  uint64_t doc_bytes = 0;
  for (size_t i = 0; i < sources.size() && budget > 0; ++i) {
    std::string text = read_file(sources[i].path, budget);
    const bool at_limit = text.size() == budget;           // the budget ends in this file
    if (at_limit) text.resize(utf8_cut(text));             // ... maybe inside a character
    const std::string_view sv(text);
    std::string why;
    const size_t nul = sv.find('\0');
    if (nul != std::string_view::npos) {
      why = cat("binary file (NUL byte at offset ", nul, ")");
    } else if (const size_t bad = utf8_error(sv); bad != std::string::npos) {
      why = cat("not valid UTF-8 (byte offset ", bad, ")");
    }
    if (!why.empty()) {
      res.warnings.push_back(cat("skipping '", sources[i].path, "': ", why));
      if (!opt.quiet) std::fprintf(stderr, "warning: %s\n", res.warnings.back().c_str());
      ++res.skipped_files;
      continue;
    }
    budget = at_limit ? 0 : budget - text.size();
    res.input_bytes += text.size();
    ScannedFile f{i, text.size(), split_documents(sv, blank_lines), doc_hash.size()};
    for (size_t d = 0; d < f.docs.size(); ++d) {
      doc_hash.push_back(document_hash(sources[i].rel, d));
      doc_bytes += f.docs[d].len;
    }
    ++res.files;
    if (!f.docs.empty()) files.push_back(std::move(f));
  }
  const size_t n_docs = doc_hash.size();
  OFT_CHECK(n_docs > 0, "corpus is empty after tokenization: the ", res.files + res.skipped_files,
            " matched files hold no text (", res.skipped_files,
            " skipped as binary/non-UTF-8): check the inputs");

  // ---- the split
  std::vector<uint8_t> is_val(n_docs, 0);
  if (n_docs >= 2 && opt.val_fraction > 0) {
    size_t n_val = 0;
    for (size_t d = 0; d < n_docs; ++d)
      n_val += is_val[d] = hash_fraction(doc_hash[d]) < opt.val_fraction;
    const auto lo = std::min_element(doc_hash.begin(), doc_hash.end()) - doc_hash.begin();
    const auto hi = std::max_element(doc_hash.begin(), doc_hash.end()) - doc_hash.begin();
    if (n_val == 0) is_val[lo] = 1;         // the document closest to the threshold
    if (n_val == n_docs) is_val[hi] = 0;    // keep at least one training document
  }

  // ---- pass 2: tokenize and write
  res.train_path = (out_dir / "train.bin").string();
  res.val_path = (out_dir / "val.bin").string();
  res.meta_path = (out_dir / "meta.json").string();
  ShardWriter train(res.train_path, static_cast<uint32_t>(vocab), eot);
  ShardWriter val(res.val_path, static_cast<uint32_t>(vocab), eot);
  Progress progress(!opt.quiet, doc_bytes);
  // One document: [bos] tokens [eot] ([CLS] ... [SEP] for BERT), or tokens [eot] without bos.
  auto write_document = [&](ShardWriter& w, const int32_t* ids, size_t n) {
    if (bos >= 0) w.append(&bos, 1);
    w.append(ids, n);
    w.append(&eot, 1);
    w.add_documents(1);
  };
  std::atomic<uint64_t> done{0};
  uint64_t content_tokens = 0;  // tokens excluding eot

  if (n_docs == 1) {
    const ScannedFile& f = files[0];
    const std::string text = read_file(sources[f.src].path, f.bytes);
    OFT_CHECK(text.size() == f.bytes, "input '", sources[f.src].path,
              "' changed while preparing: re-run `oft data prepare`");
    const std::vector<int32_t> ids =
        tok.encode(std::string_view(text).substr(f.docs[0].off, f.docs[0].len));
    const size_t n = ids.size();
    size_t n_val = 0;
    if (opt.val_fraction > 0 && n >= 2)
      n_val = std::clamp<size_t>(static_cast<size_t>(std::llround(n * opt.val_fraction)), 1, n - 1);
    write_document(train, ids.data(), n - n_val);
    if (n_val > 0) write_document(val, ids.data() + (n - n_val), n_val);
    content_tokens = n;
    done = doc_bytes;
  } else {
    struct Job {
      size_t file, off, len;  // file: index into `texts`
      bool val;
    };
    std::vector<std::string> texts;
    std::vector<Job> jobs;
    size_t batch_bytes = 0;
    auto run_batch = [&] {
      const ptrdiff_t n = static_cast<ptrdiff_t>(jobs.size());
      std::vector<std::vector<int32_t>> ids(jobs.size());
      std::exception_ptr err;
      std::mutex err_mu;
#pragma omp parallel for schedule(dynamic, 1)
      for (ptrdiff_t i = 0; i < n; ++i) {
        const Job& j = jobs[i];
        try {
          ids[i] = tok.encode(std::string_view(texts[j.file]).substr(j.off, j.len));
        } catch (...) {
          std::lock_guard<std::mutex> lk(err_mu);
          if (!err) err = std::current_exception();
        }
        progress.tick(done += j.len);
      }
      if (err) std::rethrow_exception(err);
      for (size_t i = 0; i < jobs.size(); ++i) {
        write_document(jobs[i].val ? val : train, ids[i].data(), ids[i].size());
        content_tokens += ids[i].size();
      }
      texts.clear();
      jobs.clear();
      batch_bytes = 0;
    };
    for (const ScannedFile& f : files) {
      texts.push_back(read_file(sources[f.src].path, f.bytes));
      OFT_CHECK(texts.back().size() == f.bytes, "input '", sources[f.src].path,
                "' changed while preparing: re-run `oft data prepare`");
      for (size_t d = 0; d < f.docs.size(); ++d)
        jobs.push_back({texts.size() - 1, f.docs[d].off, f.docs[d].len,
                        is_val[f.first_doc + d] != 0});
      batch_bytes += f.bytes;
      if (batch_bytes >= kBatchBytes) run_batch();
    }
    if (!jobs.empty()) run_batch();
  }
  progress.tick(done, /*final=*/true);
  OFT_CHECK(content_tokens > 0, "corpus is empty after tokenization: ", n_docs,
            " documents produced no tokens: check the inputs and the tokenizer");

  res.train_documents = train.documents();
  res.val_documents = val.documents();
  res.train_tokens = train.token_count();
  res.val_tokens = val.token_count();
  train.finish();
  val.finish();

  nlohmann::json meta;
  meta["format"] = "oft-token-shards";
  meta["format_version"] = kShardVersion;
  meta["tokenizer"] = tok.name();
  meta["vocab_size"] = vocab;
  meta["eot_id"] = eot;
  meta["bos_id"] = bos;  // -1: none
  // Masked-LM pieces (-1 / empty when the tokenizer has none), so a trainer can build its
  // masking options without loading the tokenizer (see mlm_options_from_meta()).
  meta["mask_id"] = tok.mask_id();
  meta["pad_id"] = tok.pad_id();
  meta["special_ids"] = tok.special_ids();
  meta["token_bytes"] = shard_token_bytes(static_cast<uint64_t>(vocab));
  meta["train"] = {{"file", "train.bin"}, {"tokens", res.train_tokens},
                   {"documents", res.train_documents}};
  meta["val"] = {{"file", "val.bin"}, {"tokens", res.val_tokens},
                 {"documents", res.val_documents}};
  meta["documents"] = n_docs;
  meta["files"] = res.files;
  meta["skipped_files"] = res.skipped_files;
  meta["input_bytes"] = res.input_bytes;
  meta["inputs"] = opt.inputs;
  meta["val_fraction"] = opt.val_fraction;
  meta["split"] = n_docs == 1 ? "single_document_tail" : "document_hash";
  meta["options"] = {{"doc_split", opt.doc_split},
                     {"max_bytes", opt.max_bytes},
                     {"extensions", opt.extensions}};
  write_text_atomic(res.meta_path, meta.dump(2) + "\n");
  res.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  return res;
}

}  // namespace oft
