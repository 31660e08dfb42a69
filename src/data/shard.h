// Token shards: the on-disk format of tokenized corpora (train.bin / val.bin).
//
// Layout (all integers little-endian):
//   offset  0  char[8]  magic "OFTSHRD1"
//   offset  8  u32      version (= 1)
//   offset 12  u32      vocab_size
//   offset 16  u32      token_bytes (2 if vocab_size <= 65536, else 4)
//   offset 20  u32      eot_id (end-of-text token separating documents)
//   offset 24  u64      token_count
//   offset 32  u64      checksum (zlib CRC-32 of the token body, widened to 64 bits)
//   offset 40  u64      documents
//   offset 48  zeros up to 64 bytes (reserved)
//   offset 64  tokens: [token_count] of u16 or u32
//
// ShardWriter streams tokens into "<path>.tmp" and only renames it over <path> in finish(), so a
// crash or an exception never leaves a half-written shard behind. Shard memory-maps a file
// read-only and validates it on open.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace oft {

inline constexpr char kShardMagic[8] = {'O', 'F', 'T', 'S', 'H', 'R', 'D', '1'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

// Bytes per stored token for a vocabulary size: 2 when every id fits in u16, else 4.
inline uint32_t shard_token_bytes(uint64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t vocab_size = 0;
  uint32_t token_bytes = 0;
  uint32_t eot_id = 0;
  uint64_t token_count = 0;
  uint64_t checksum = 0;
  uint64_t documents = 0;
};

class ShardWriter {
 public:
  // Creates <path>.tmp at once (so an unwritable destination fails here, not at the end).
  ShardWriter(const std::string& path, uint32_t vocab_size, int32_t eot_id);
  // Without finish(): closes and removes the .tmp file; <path> is left untouched.
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends tokens[0..n). Every id must be in [0, vocab_size); a bad id throws and appends
  // nothing of this call.
  void append(const int32_t* tokens, size_t n);
  void append(const std::vector<int32_t>& tokens) { append(tokens.data(), tokens.size()); }
  // Counts finished documents (stored in the header; informational).
  void add_documents(uint64_t n = 1) { documents_ += n; }

  // Writes the header, fsyncs, renames <path>.tmp over <path> and fsyncs the directory.
  void finish();

  uint64_t token_count() const { return token_count_; }
  uint64_t documents() const { return documents_; }
  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  void write_all(const void* data, size_t n, uint64_t offset);

  std::string path_, tmp_path_;
  int fd_ = -1;
  uint32_t vocab_size_ = 0, token_bytes_ = 0;
  int32_t eot_id_ = 0;
  uint64_t token_count_ = 0, documents_ = 0;
  uint64_t crc_ = 0;
  uint64_t file_offset_ = kShardHeaderBytes;
  std::vector<unsigned char> buf_;
  bool finished_ = false;
};

class Shard {
 public:
  // Memory-maps and validates <path>: readable, header size, magic, version, token width,
  // body size == token_count * token_bytes, and (unless verify_checksum is false) the CRC-32 of
  // the body. Every failure is an oft::Error naming the file and the fix.
  static Shard open(const std::string& path, bool verify_checksum = true);

  Shard(Shard&& o) noexcept;
  Shard& operator=(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  // Reads only the 64-byte header (validated the same way as open(), body not checked).
  static ShardHeader read_header(const std::string& path);

  const ShardHeader& header() const { return h_; }
  const std::string& path() const { return path_; }
  size_t size() const { return static_cast<size_t>(h_.token_count); }  // tokens
  uint32_t vocab_size() const { return h_.vocab_size; }
  int32_t eot_id() const { return static_cast<int32_t>(h_.eot_id); }
  uint64_t documents() const { return h_.documents; }

  // Token i (i < size(); unchecked beyond an assert in debug builds).
  int32_t token(size_t i) const;
  // out[0..n) = tokens[begin .. begin+n); throws if the range leaves the shard.
  void copy(size_t begin, size_t n, int32_t* out) const;
  // Recomputes the CRC-32 of the body and throws on mismatch (open() does this by default).
  void verify_checksum() const;

 private:
  Shard() = default;
  void release();

  std::string path_;
  ShardHeader h_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* body_ = nullptr;
};

}  // namespace oft
