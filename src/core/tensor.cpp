// Tensor storage, views, copies and dtype conversion (see tensor.h).
#include "core/tensor.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/bf16.h"

namespace oft {

namespace {
DeviceAllocFn g_alloc[2] = {nullptr, nullptr};
DeviceFreeFn g_free[2] = {nullptr, nullptr};
DeviceCopyFn g_copy = nullptr;

void cpu_free(void* p) { std::free(p); }

std::atomic<size_t> g_cpu_bytes{0};
std::atomic<size_t> g_cpu_limit_override{0};
constexpr size_t kNoLimit = std::numeric_limits<size_t>::max();

// MemAvailable of /proc/meminfo in bytes, read once; no limit where it cannot be read.
size_t machine_cpu_limit() {
  static const size_t limit = [] {
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("MemAvailable:", 0) != 0) continue;
      std::istringstream in(line.substr(13));
      size_t kb = 0;
      if (in >> kb && kb > 0) return kb * 1024;
    }
    return kNoLimit;
  }();
  return limit;
}

size_t cpu_limit() {
  const size_t o = g_cpu_limit_override.load();
  return o ? o : machine_cpu_limit();
}

size_t cpu_alloc_bytes(size_t bytes) { return (bytes + 63) / 64 * 64; }

// b bytes as "x.xx GiB".
std::string gib(size_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Fresh memory for st.bytes on st.device (CPU: 64-byte aligned, counted against cpu_limit()),
// with its deleter. `shape` (when known) names the tensor in the out-of-memory error.
void allocate(Storage& st, const Shape* shape) {
  if (st.device == Device::CPU) {
    const size_t b = cpu_alloc_bytes(st.bytes), held = g_cpu_bytes.load(), limit = cpu_limit();
    if (limit != kNoLimit && (b > limit || held > limit - b))
      fail("out of memory: ", b, " bytes for ",
           shape ? "a tensor of shape " + shape_str(*shape) : std::string("a tensor's new storage"),
           " would bring the tensors on the CPU to ", gib(held + b), ", more than the ", gib(limit),
           " this machine had available (MemAvailable in /proc/meminfo); use a smaller batch "
           "(train.batch_size, data.seq_len) or model, or run on a GPU (train.device=cuda)");
    st.data = std::aligned_alloc(64, b);
    st.deleter = cpu_free;
    if (st.data) {
      g_cpu_bytes += b;
      st.counted = true;
    }
  } else {
    const int i = static_cast<int>(st.device);
    OFT_CHECK(g_alloc[i] != nullptr, "device ", device_name(st.device),
              " is not available in this build (rebuild with CUDA, or set device=cpu)");
    st.data = g_alloc[i](st.bytes);
    st.deleter = g_free[i];
  }
}
}  // namespace

void Storage::release() {
  if (data && deleter) deleter(data);
  if (counted) g_cpu_bytes -= cpu_alloc_bytes(bytes);
  counted = false;
  data = nullptr;
  deleter = nullptr;
}

size_t cpu_tensor_bytes() { return g_cpu_bytes.load(); }

void set_cpu_memory_limit(size_t bytes) { g_cpu_limit_override = bytes; }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    OFT_ASSERT(d >= 0, "negative dimension in ", shape_str(s));
    n *= d;
  }
  return n;
}

void register_device_allocator(Device d, DeviceAllocFn alloc, DeviceFreeFn free) {
  g_alloc[static_cast<int>(d)] = alloc;
  g_free[static_cast<int>(d)] = free;
}

void register_device_copy(DeviceCopyFn fn) { g_copy = fn; }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  auto st = std::make_shared<Storage>();
  st->bytes = std::max<size_t>(t.nbytes(), 1);
  st->device = device;
  allocate(*st, &shape);
  OFT_CHECK(st->data != nullptr, "out of memory allocating ", st->bytes, " bytes on ",
            device_name(device), " for a tensor of shape ", shape_str(shape));
  t.storage_ = std::move(st);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::CPU) {
    std::memset(t.raw(), 0, t.nbytes());
  } else {
    std::vector<char> z(t.nbytes(), 0);
    g_copy(t.raw(), device, z.data(), Device::CPU, t.nbytes());
  }
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<double>& values, DType dtype) {
  OFT_ASSERT(shape_numel(shape) == static_cast<int64_t>(values.size()), "from_vector size");
  Tensor t = empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::F32: t.data<float>()[i] = static_cast<float>(values[i]); break;
      case DType::F64: t.data<double>()[i] = values[i]; break;
      case DType::I32: t.data<int32_t>()[i] = static_cast<int32_t>(values[i]); break;
      case DType::BF16: static_cast<uint16_t*>(t.raw())[i] = float_to_bf16(static_cast<float>(values[i])); break;
    }
  }
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  OFT_ASSERT(i >= 0 && i < n, "dim ", i, " of shape ", shape_str(shape_));
  return shape_[i];
}

Tensor Tensor::view(const Shape& shape) const {
  OFT_ASSERT(shape_numel(shape) == numel_, "view ", shape_str(shape_), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  OFT_ASSERT(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice [", begin, ", ",
             end, ") of ", shape_str(shape_));
  int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.offset_bytes_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  OFT_ASSERT(src.numel_ == numel_ && src.dtype_ == dtype_, "copy ", shape_str(src.shape_), " ",
             dtype_name(src.dtype_), " into ", shape_str(shape_), " ", dtype_name(dtype_));
  if (nbytes() == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU) {
    std::memmove(raw(), src.raw(), nbytes());
  } else {
    OFT_ASSERT(g_copy != nullptr, "no device copy registered");
    g_copy(raw(), device(), src.raw(), src.device(), nbytes());
  }
}

void Tensor::move_storage_to(void* dst) {
  OFT_ASSERT(storage_ != nullptr, "move_storage_to on an undefined tensor");
  Storage& st = *storage_;
  if (st.data == dst) return;
  if (st.device == Device::CPU) {
    std::memcpy(dst, st.data, st.bytes);
  } else {
    OFT_ASSERT(g_copy != nullptr, "no device copy registered");
    g_copy(dst, st.device, st.data, st.device, st.bytes);
  }
  st.release();
  st.data = dst;
}

void Tensor::reallocate_storage() {
  OFT_ASSERT(storage_ != nullptr, "reallocate_storage on an undefined tensor");
  Storage& st = *storage_;
  Storage fresh;  // takes the old memory (and frees it, if owned) when it goes
  fresh.bytes = st.bytes;
  fresh.device = st.device;
  allocate(fresh, nullptr);
  OFT_CHECK(fresh.data != nullptr, "out of memory allocating ", st.bytes, " bytes on ",
            device_name(st.device));
  std::swap(st.data, fresh.data);
  std::swap(st.deleter, fresh.deleter);
  std::swap(st.counted, fresh.counted);
  if (st.device == Device::CPU)
    std::memcpy(st.data, fresh.data, st.bytes);
  else
    g_copy(st.data, st.device, fresh.data, st.device, st.bytes);
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::cast(DType t) const {
  if (t == dtype_) return clone();
  if (device() != Device::CPU) return to(Device::CPU).cast(t).to(device());
  return from_vector(shape_, to_vector(), t);
}

std::vector<double> Tensor::to_vector() const {
  Tensor h = to(Device::CPU);
  std::vector<double> v(static_cast<size_t>(numel_));
  for (int64_t i = 0; i < numel_; ++i) {
    switch (dtype_) {
      case DType::F32: v[i] = h.data<float>()[i]; break;
      case DType::F64: v[i] = h.data<double>()[i]; break;
      case DType::I32: v[i] = h.data<int32_t>()[i]; break;
      case DType::BF16: v[i] = bf16_to_float(static_cast<const uint16_t*>(h.raw())[i]); break;
    }
  }
  return v;
}

double Tensor::item() const {
  OFT_ASSERT(numel_ == 1, "item() of shape ", shape_str(shape_));
  return to_vector()[0];
}

}  // namespace oft
