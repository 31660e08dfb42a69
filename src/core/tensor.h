// Tensor: a contiguous, row-major, reference-counted block of typed memory on one device.
// Views (reshape, leading-dimension slices) share storage. There is no autograd here: layers
// keep what their backward needs and call ops explicitly (see src/ops/ops.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace oft {

enum class DType : uint8_t { F32, F64, BF16, I32 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Owned device memory. The deleter is chosen by the allocator of the device (CPU: free).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  void (*deleter)(void*) = nullptr;
  bool counted = false;  // CPU memory counted in cpu_tensor_bytes()
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() { release(); }
  // Frees the memory if owned (and uncounts it); data is null after.
  void release();
};

// Bytes of CPU memory held by tensors now. CPU allocations that would take it past the memory
// the machine had available when the first one was made (MemAvailable in /proc/meminfo) fail
// with an error naming the fix, instead of the kernel's out-of-memory killer ending the process
// without a word once the pages are touched.
size_t cpu_tensor_bytes();
// Replaces that limit (bytes; 0 restores the machine's): for tests.
void set_cpu_memory_limit(size_t bytes);

// Allocator hook for non-CPU devices; the CUDA backend registers one at start-up.
using DeviceAllocFn = void* (*)(size_t bytes);
using DeviceFreeFn = void (*)(void*);
void register_device_allocator(Device d, DeviceAllocFn alloc, DeviceFreeFn free);

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  // CPU tensor holding a copy of `values` (converted to dtype).
  static Tensor from_vector(const Shape& shape, const std::vector<double>& values,
                            DType dtype = DType::F32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }

  void* raw() const { return static_cast<char*>(storage_->data) + offset_bytes_; }
  template <class T>
  T* data() const {
    OFT_ASSERT(dtype_of<T>() == dtype_, "tensor is ", dtype_name(dtype_));
    return static_cast<T*>(raw());
  }

  // Same storage, new shape with equal element count.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the leading dimension; shares storage.
  Tensor slice(int64_t begin, int64_t end) const;

  // Deep copies. `to` converts device; `cast` converts dtype (through the host for device
  // tensors: use ops::convert in hot paths).
  Tensor clone() const;
  Tensor to(Device d) const;
  Tensor cast(DType t) const;
  // Copies src (same numel and dtype, any devices) into this tensor.
  void copy_from(const Tensor& src);

  // CPU conveniences for tests and small host-side bookkeeping.
  std::vector<double> to_vector() const;  // any dtype, any device
  double item() const;                    // numel must be 1

  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }
  // Bytes of the whole storage behind this tensor (views included) and this view's offset in it.
  size_t storage_bytes() const { return storage_ ? storage_->bytes : 0; }
  size_t storage_offset() const { return offset_bytes_; }
  // Moves the whole storage (seen by every tensor that shares it) into `dst`: caller-owned
  // memory of the same device with room for storage_bytes(). The contents are copied, the old
  // memory is released, and `dst` must outlive every tensor that shares the storage.
  // Data-parallel training gathers the gradients into one flat buffer this way while the
  // layers keep their handles.
  void move_storage_to(void* dst);
  // The reverse: moves the storage into fresh memory that it owns again.
  void reallocate_storage();

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
};

// Device-to-device/host copy hook registered by the CUDA backend.
using DeviceCopyFn = void (*)(void* dst, Device dst_dev, const void* src, Device src_dev,
                              size_t bytes);
void register_device_copy(DeviceCopyFn fn);

}  // namespace oft
