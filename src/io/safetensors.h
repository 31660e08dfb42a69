// Hugging Face safetensors files: writing (atomic, byte-identical to the reference library's
// layout) and validated, memory-mapped reading with dtype conversion.
//
// Format: 8-byte little-endian u64 N, then N bytes of JSON
//   {"__metadata__":{"k":"v",...},"NAME":{"dtype":"F32","shape":[2,3],"data_offsets":[b,e]},...}
// padded with spaces to a multiple of 8, then the data buffer; offsets are relative to the start
// of the buffer. Like the reference writer, tensors are ordered by dtype alignment (descending:
// F64, F32, I32, BF16) and then by name; with a single dtype that is plain name order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace oft {

// The safetensors dtype string of an oft dtype: "F32", "F64", "BF16", "I32".
const char* safetensors_dtype_name(DType t);

// One header entry of a safetensors file.
struct SafetensorsTensorInfo {
  std::string dtype;      // as written in the file: "F32", "BF16", "F16", "I64", ...
  Shape shape;            // [] for a scalar
  uint64_t begin = 0;     // byte range [begin, end) relative to the start of the data buffer
  uint64_t end = 0;
  int64_t numel() const { return shape_numel(shape); }
  uint64_t nbytes() const { return end - begin; }
};

// Writes `tensors` (F32/F64/BF16/I32; non-CPU tensors are copied to the host) and string
// `metadata` to `path` atomically (tmp file + fsync + rename). Throws oft::Error on duplicate or
// reserved names, undefined tensors, or I/O errors. An empty metadata map writes no
// "__metadata__" entry.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The exact bytes save_safetensors would write (for checksums and tests; holds everything in
// memory).
std::string serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// A validated, memory-mapped safetensors file. Copies share the mapping; loaded tensors are
// independent copies, so they outlive the file object.
class SafetensorsFile {
 public:
  using TensorInfo = SafetensorsTensorInfo;

  // Maps and validates the whole header (dtypes, shapes vs. offsets, bounds, overlaps). Throws
  // oft::Error naming the file and the problem.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted by name
  size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws (listing available names) if `name` is not in the file.
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // CPU tensor in its stored dtype when oft supports it (F32, F64, BF16, I32); F16 loads as
  // F32; integer dtypes (BOOL, U8, I8, I16, U16, U32, I64, U64) load as I32 when every value
  // fits (error otherwise); other dtypes (FP8, ...) are an error.
  Tensor load(const std::string& name) const;
  // CPU tensor converted to `dtype`: any of F16/BF16/F32/F64 to F32/F64/BF16, or an integer
  // dtype to I32 (range-checked). Same dtype is a plain copy.
  Tensor load_as(const std::string& name, DType dtype) const;

 private:
  struct Mapping;
  const uint8_t* tensor_bytes(const TensorInfo& ti) const;

  std::shared_ptr<const Mapping> map_;
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  const uint8_t* data_ = nullptr;  // start of the data buffer inside the mapping
  uint64_t data_size_ = 0;
};

}  // namespace oft
