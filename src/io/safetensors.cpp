// Safetensors writer and validated memory-mapped reader (see safetensors.h).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/bf16.h"
#include "io/atomic_file.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace oft {

namespace {

constexpr uint64_t kMaxHeader = 100'000'000;  // same limit as the reference reader

// Every dtype the safetensors format defines, with its element size in bits.
struct DtypeSpec {
  const char* name;
  int bits;
};
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", 8},     {"F4", 4},       {"F6_E2M3", 6},  {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},       {"F8_E5M2", 8},  {"F8_E4M3", 8},  {"F8_E8M0", 8}, {"I16", 16},
    {"U16", 16},     {"F16", 16},     {"BF16", 16},    {"I32", 32},    {"U32", 32},
    {"F32", 32},     {"C64", 64},     {"F64", 64},     {"I64", 64},    {"U64", 64},
};

int dtype_bits(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.bits;
  return 0;
}

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) {
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}

bool is_float_dtype(const std::string& d) {
  return d == "F16" || d == "BF16" || d == "F32" || d == "F64";
}
bool is_int_dtype(const std::string& d) {
  return d == "BOOL" || d == "U8" || d == "I8" || d == "I16" || d == "U16" || d == "I32" ||
         d == "U32" || d == "I64" || d == "U64";
}

// Rank in the reference library's Dtype enum (increasing alignment); the writer orders tensors
// by descending rank, then by name.
int dtype_rank(DType t) {
  switch (t) {
    case DType::BF16: return 0;
    case DType::I32: return 1;
    case DType::F32: return 2;
    case DType::F64: return 3;
  }
  return 0;
}

std::string json_string(const std::string& s, const char* what) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    fail("safetensors: ", what, " '", s, "' is not valid UTF-8; use ASCII/UTF-8 names");
  }
}

float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  uint32_t u = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                         : (sign | ((exp + 112u) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Calls f(i, value) for each element of a floating-point buffer, value as double.
template <class F>
void for_each_float(const uint8_t* p, const std::string& dt, int64_t n, F&& f) {
  if (dt == "F32") {
    for (int64_t i = 0; i < n; ++i) f(i, static_cast<double>(load_le<float>(p + 4 * i)));
  } else if (dt == "F64") {
    for (int64_t i = 0; i < n; ++i) f(i, load_le<double>(p + 8 * i));
  } else if (dt == "BF16") {
    for (int64_t i = 0; i < n; ++i) f(i, static_cast<double>(bf16_to_float(load_le<uint16_t>(p + 2 * i))));
  } else {
    OFT_ASSERT(dt == "F16", dt);
    for (int64_t i = 0; i < n; ++i) f(i, static_cast<double>(f16_to_float(load_le<uint16_t>(p + 2 * i))));
  }
}

int64_t read_int(const uint8_t* p, const std::string& dt, int64_t i) {
  if (dt == "BOOL" || dt == "U8") return p[i];
  if (dt == "I8") return load_le<int8_t>(p + i);
  if (dt == "I16") return load_le<int16_t>(p + 2 * i);
  if (dt == "U16") return load_le<uint16_t>(p + 2 * i);
  if (dt == "I32") return load_le<int32_t>(p + 4 * i);
  if (dt == "U32") return load_le<uint32_t>(p + 4 * i);
  if (dt == "I64") return load_le<int64_t>(p + 8 * i);
  uint64_t u = load_le<uint64_t>(p + 8 * i);  // U64
  return u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
             ? std::numeric_limits<int64_t>::max()
             : static_cast<int64_t>(u);
}

std::string range_str(uint64_t b, uint64_t e) { return cat("[", b, ", ", e, ")"); }

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

struct Prepared {
  std::string prefix;                 // 8-byte length + padded JSON header
  std::vector<const Tensor*> order;   // data order
  std::vector<Tensor> host;           // host copies of non-CPU tensors (kept alive)
};

Prepared prepare(const std::string& where,
                 const std::vector<std::pair<std::string, Tensor>>& tensors,
                 const std::map<std::string, std::string>& metadata) {
  Prepared p;
  std::set<std::string> seen;
  std::vector<std::pair<const std::string*, const Tensor*>> items;
  p.host.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    OFT_CHECK(name != "__metadata__", where, ": '__metadata__' is reserved and cannot name a tensor");
    OFT_CHECK(seen.insert(name).second, where, ": duplicate tensor name '", name,
              "'; every tensor needs a unique name");
    OFT_CHECK(t.defined(), where, ": tensor '", name, "' is undefined (was it ever allocated?)");
    const Tensor* tp = &t;
    if (t.device() != Device::CPU) {
      p.host.push_back(t.to(Device::CPU));
      tp = &p.host.back();
    }
    items.emplace_back(&name, tp);
  }
  std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    int ra = dtype_rank(a.second->dtype()), rb = dtype_rank(b.second->dtype());
    if (ra != rb) return ra > rb;
    return *a.first < *b.first;
  });

  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_string(k, "metadata key") + ":" + json_string(v, "metadata value");
    }
    h += '}';
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : items) {
    if (h.size() > 1) h += ',';
    h += json_string(*name, "tensor name");
    h += ":{\"dtype\":\"";
    h += safetensors_dtype_name(t->dtype());
    h += "\",\"shape\":[";
    for (size_t i = 0; i < t->shape().size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t->shape()[i]);
    }
    uint64_t end = offset + t->nbytes();
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
    p.order.push_back(t);
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');

  uint64_t n = h.size();
  p.prefix.resize(8);
  std::memcpy(p.prefix.data(), &n, 8);
  p.prefix += h;
  return p;
}

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(path, tensors, metadata);
  AtomicFileWriter w(path);
  w.write(p.prefix.data(), p.prefix.size());
  for (const Tensor* t : p.order) w.write(t->raw(), t->nbytes());
  w.commit();
}

std::string serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare("safetensors", tensors, metadata);
  std::string out = std::move(p.prefix);
  for (const Tensor* t : p.order) out.append(static_cast<const char*>(t->raw()), t->nbytes());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) ::munmap(addr, len);
  }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const std::string& P = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    fail("cannot open safetensors file ", P, ": ", std::strerror(err),
         err == ENOENT ? " (check the path)" : "");
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("cannot open safetensors file ", P, ": ", std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("cannot open safetensors file ", P, ": it is a directory, expected a .safetensors file");
  }
  uint64_t fsize = static_cast<uint64_t>(st.st_size);
  if (fsize < 8) {
    ::close(fd);
    fail(P, ": file is only ", fsize,
         " bytes, shorter than the 8-byte safetensors header length (truncated or not a "
         "safetensors file)");
  }
  auto m = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, fsize, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) fail("cannot map safetensors file ", P, ": ", std::strerror(map_err));
  m->addr = addr;
  m->len = fsize;
  f.map_ = m;
  const uint8_t* base = static_cast<const uint8_t*>(addr);

  uint64_t n = load_le<uint64_t>(base);
  if (n > fsize - 8)
    fail(P, ": header length ", n, " is larger than the file (", fsize,
         " bytes): truncated or not a safetensors file");
  if (n > kMaxHeader)
    fail(P, ": header length ", n, " exceeds the ", kMaxHeader,
         "-byte limit of the format: not a safetensors file");
  f.data_ = base + 8 + n;
  f.data_size_ = fsize - 8 - n;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(base + 8, base + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    for (char& c : why)
      if (static_cast<unsigned char>(c) < 0x20) c = ' ';  // keep the message on one line
    fail(P, ": header is not valid JSON (", why, "): corrupt or not a safetensors file");
  }
  OFT_CHECK(j.is_object(), P, ": header is not a JSON object: corrupt or not a safetensors file");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      OFT_CHECK(e.is_object(), P, ": \"__metadata__\" must be an object of strings (corrupt header)");
      for (auto mi = e.begin(); mi != e.end(); ++mi) {
        OFT_CHECK(mi.value().is_string(), P, ": \"__metadata__\" entry '", mi.key(),
                  "' is not a string (the format allows only string values)");
        f.metadata_[mi.key()] = mi.value().get<std::string>();
      }
      continue;
    }
    OFT_CHECK(e.is_object(), P, ": entry for tensor '", name, "' is not an object (corrupt header)");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      OFT_CHECK(e.contains(key), P, ": tensor '", name, "' has no \"", key,
                "\" entry (corrupt header)");
    TensorInfo ti;
    OFT_CHECK(e["dtype"].is_string(), P, ": tensor '", name, "' has a non-string dtype (corrupt header)");
    ti.dtype = e["dtype"].get<std::string>();
    int bits = dtype_bits(ti.dtype);
    OFT_CHECK(bits != 0, P, ": tensor '", name, "' has unknown dtype \"", ti.dtype,
              "\" (the format defines ", known_dtypes(), ")");

    const nlohmann::json& sh = e["shape"];
    OFT_CHECK(sh.is_array(), P, ": tensor '", name, "' has a shape that is not a list (corrupt header)");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : sh) {
      OFT_CHECK(d.is_number_unsigned(), P, ": tensor '", name, "' has shape ", sh.dump(),
                " with an entry that is not a non-negative integer (corrupt header)");
      uint64_t v = d.get<uint64_t>();
      OFT_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), P, ": tensor '",
                name, "' has an impossible dimension ", v, " (corrupt header)");
      ti.shape.push_back(static_cast<int64_t>(v));
      overflow |= __builtin_mul_overflow(numel, v, &numel);
    }
    uint64_t need_bits = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(bits), &need_bits);
    OFT_CHECK(!overflow, P, ": tensor '", name, "' has shape ", sh.dump(),
              " whose size overflows (corrupt header)");
    OFT_CHECK(need_bits % 8 == 0, P, ": tensor '", name, "' of ", ti.dtype, " with shape ",
              sh.dump(), " does not fill whole bytes (corrupt header)");
    uint64_t need = need_bits / 8;

    const nlohmann::json& off = e["data_offsets"];
    OFT_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                  off[1].is_number_unsigned(),
              P, ": tensor '", name, "' has data_offsets ", off.dump(),
              ", expected [begin, end] with non-negative integers (corrupt header)");
    ti.begin = off[0].get<uint64_t>();
    ti.end = off[1].get<uint64_t>();
    OFT_CHECK(ti.begin <= ti.end, P, ": tensor '", name, "' has data_offsets ", off.dump(),
              " with begin > end (corrupt header)");
    OFT_CHECK(ti.end - ti.begin == need, P, ": tensor '", name, "' has data_offsets ",
              range_str(ti.begin, ti.end), " holding ", ti.end - ti.begin, " bytes but ", ti.dtype,
              " shape ", shape_str(ti.shape), " needs ", need, " bytes (corrupt header)");
    OFT_CHECK(ti.end <= f.data_size_, P, ": truncated: tensor ", name, " needs bytes ",
              range_str(ti.begin, ti.end), " but the file holds only ", f.data_size_,
              " data bytes (re-copy or re-save the file)");
    f.tensors_.emplace(name, std::move(ti));
  }

  // Overlap check on the non-empty ranges, in offset order.
  std::vector<std::pair<const std::string*, const TensorInfo*>> by_off;
  for (const auto& [name, ti] : f.tensors_)
    if (ti.end > ti.begin) by_off.emplace_back(&name, &ti);
  std::sort(by_off.begin(), by_off.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < by_off.size(); ++i) {
    const auto& [pn, pi] = by_off[i - 1];
    const auto& [cn, ci] = by_off[i];
    OFT_CHECK(ci->begin >= pi->end, P, ": tensors '", *pn, "' ", range_str(pi->begin, pi->end),
              " and '", *cn, "' ", range_str(ci->begin, ci->end),
              " overlap in the data buffer (corrupt file)");
  }
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> r;
  r.reserve(tensors_.size());
  for (const auto& kv : tensors_) r.push_back(kv.first);
  return r;
}

const SafetensorsFile::TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    std::string list;
    size_t shown = 0;
    for (const auto& kv : tensors_) {
      if (shown == 10) break;
      if (shown++) list += ", ";
      list += kv.first;
    }
    if (tensors_.size() > shown) list += cat(", ... (", tensors_.size() - shown, " more)");
    fail(path_, ": no tensor named '", name, "'; the file has ", tensors_.size(), " tensor",
         tensors_.size() == 1 ? "" : "s", tensors_.empty() ? "" : ": ", list,
         " (does the checkpoint match the model config?)");
  }
  return it->second;
}

const uint8_t* SafetensorsFile::tensor_bytes(const TensorInfo& ti) const {
  return data_ + ti.begin;
}

Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const std::string& d = ti.dtype;
  if (d == "F32") return load_as(name, DType::F32);
  if (d == "F64") return load_as(name, DType::F64);
  if (d == "BF16") return load_as(name, DType::BF16);
  if (d == "F16") return load_as(name, DType::F32);
  if (is_int_dtype(d)) return load_as(name, DType::I32);
  fail(path_, ": tensor '", name, "' has dtype ", d,
       " which oft cannot load (supported: F32, F64, BF16, F16, and integers that fit in I32); "
       "convert the checkpoint first");
}

Tensor SafetensorsFile::load_as(const std::string& name, DType dtype) const {
  const TensorInfo& ti = info(name);
  const std::string& d = ti.dtype;
  const uint8_t* src = tensor_bytes(ti);
  int64_t n = ti.numel();
  Tensor out = Tensor::empty(ti.shape, dtype);

  if (d == safetensors_dtype_name(dtype)) {
    if (out.nbytes()) std::memcpy(out.raw(), src, out.nbytes());
    return out;
  }
  if (is_float_dtype(d) && dtype != DType::I32) {
    switch (dtype) {
      case DType::F32: {
        float* o = out.data<float>();
        for_each_float(src, d, n, [&](int64_t i, double v) { o[i] = static_cast<float>(v); });
        break;
      }
      case DType::F64: {
        double* o = out.data<double>();
        for_each_float(src, d, n, [&](int64_t i, double v) { o[i] = v; });
        break;
      }
      case DType::BF16: {
        uint16_t* o = static_cast<uint16_t*>(out.raw());
        for_each_float(src, d, n,
                       [&](int64_t i, double v) { o[i] = float_to_bf16(static_cast<float>(v)); });
        break;
      }
      case DType::I32: break;
    }
    return out;
  }
  if (is_int_dtype(d) && dtype == DType::I32) {
    int32_t* o = out.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = read_int(src, d, i);
      OFT_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
                path_, ": tensor '", name, "' (", d, ") has value ", v, " at index ", i,
                ", outside the I32 range oft uses for integers");
      o[i] = static_cast<int32_t>(v);
    }
    return out;
  }
  fail(path_, ": cannot load tensor '", name, "' stored as ", d, " as ", dtype_name(dtype),
       " (only conversions among F16/BF16/F32/F64 and from integer types to I32 are supported)");
}

}  // namespace oft
