// Token shard writer (streaming, atomic rename) and reader (mmap + validation). Format in shard.h.
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace oft {
namespace {

constexpr size_t kWriteBuffer = 1 << 20;  // bytes buffered before a write(2)
constexpr const char* kRecreate = "re-create it with `oft data prepare`";

void put_u32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t get_u32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// zlib's crc32 takes a uInt length; feed it in chunks.
uint64_t crc_update(uint64_t crc, const unsigned char* p, size_t n) {
  uLong c = static_cast<uLong>(crc);
  while (n > 0) {
    const size_t k = std::min<size_t>(n, 1u << 30);
    c = crc32(c, p, static_cast<uInt>(k));
    p += k;
    n -= k;
  }
  return c;
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%08llx", static_cast<unsigned long long>(v));
  return b;
}

std::string errno_text() { return std::strerror(errno); }

// Parses and validates the fixed header; file_bytes is the size of the whole file.
ShardHeader parse_header(const std::string& path, const unsigned char* p, uint64_t file_bytes) {
  OFT_CHECK(std::memcmp(p, kShardMagic, 8) == 0, "'", path,
            "' is not an oft token shard (wrong magic): ", kRecreate);
  ShardHeader h;
  h.version = get_u32(p + 8);
  h.vocab_size = get_u32(p + 12);
  h.token_bytes = get_u32(p + 16);
  h.eot_id = get_u32(p + 20);
  h.token_count = get_u64(p + 24);
  h.checksum = get_u64(p + 32);
  h.documents = get_u64(p + 40);
  OFT_CHECK(h.version == kShardVersion, "shard '", path, "' has format version ", h.version,
            " but this oft reads version ", kShardVersion, ": ", kRecreate);
  OFT_CHECK(h.vocab_size > 0, "shard '", path, "' has vocab_size 0 (corrupt header): ",
            kRecreate);
  OFT_CHECK(h.token_bytes == shard_token_bytes(h.vocab_size), "shard '", path,
            "' has token width ", h.token_bytes, " bytes but vocab_size ", h.vocab_size,
            " needs ", shard_token_bytes(h.vocab_size), " (corrupt header): ", kRecreate);
  OFT_CHECK(h.token_count <= (UINT64_MAX - kShardHeaderBytes) / h.token_bytes, "shard '", path,
            "' claims an impossible token_count ", h.token_count, " (corrupt header): ",
            kRecreate);
  const uint64_t expected = h.token_count * h.token_bytes;
  const uint64_t actual = file_bytes - kShardHeaderBytes;
  OFT_CHECK(actual >= expected, "shard '", path, "' is truncated: the header promises ",
            h.token_count, " tokens = ", expected, " body bytes but the file holds ", actual,
            ": ", kRecreate);
  OFT_CHECK(actual == expected, "shard '", path, "' has ", actual, " body bytes but the header's ",
            h.token_count, " tokens need ", expected, " (trailing data): ", kRecreate);
  return h;
}

int open_for_read(const std::string& path, uint64_t* file_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  OFT_CHECK(fd >= 0, "cannot open shard '", path, "': ", errno_text(),
            ": check the path or create it with `oft data prepare`");
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read shard '", path, "': not a regular file: check the path");
  }
  *file_bytes = static_cast<uint64_t>(st.st_size);
  if (*file_bytes < kShardHeaderBytes) {
    ::close(fd);
    fail("shard '", path, "' is ", *file_bytes, " bytes, smaller than the ", kShardHeaderBytes,
         "-byte header (truncated or not a shard): ", kRecreate);
  }
  return fd;
}

}  // namespace

// ---------------------------------------------------------------- writer

ShardWriter::ShardWriter(const std::string& path, uint32_t vocab_size, int32_t eot_id)
    : path_(path), tmp_path_(path + ".tmp"), vocab_size_(vocab_size), eot_id_(eot_id) {
  OFT_CHECK(vocab_size > 0, "shard '", path, "': vocab_size must be >= 1: check the tokenizer");
  OFT_CHECK(eot_id >= 0 && static_cast<uint32_t>(eot_id) < vocab_size, "shard '", path,
            "': eot_id ", eot_id, " is outside the vocabulary (vocab_size ", vocab_size,
            "): check the tokenizer");
  token_bytes_ = shard_token_bytes(vocab_size);
  crc_ = crc32(0L, Z_NULL, 0);
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  OFT_CHECK(fd_ >= 0, "cannot create shard '", tmp_path_, "': ", errno_text(),
            ": check that the output directory exists and is writable");
  buf_.reserve(kWriteBuffer + 4096);
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_path_.c_str());
}

void ShardWriter::write_all(const void* data, size_t n, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    OFT_CHECK(w > 0, "cannot write shard '", tmp_path_, "': ", errno_text(),
              ": free disk space or choose another output directory");
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

void ShardWriter::flush_buffer() {
  if (buf_.empty()) return;
  crc_ = crc_update(crc_, buf_.data(), buf_.size());
  write_all(buf_.data(), buf_.size(), file_offset_);
  file_offset_ += buf_.size();
  buf_.clear();
}

void ShardWriter::append(const int32_t* tokens, size_t n) {
  OFT_CHECK(!finished_, "shard '", path_, "': append() after finish()");
  for (size_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    OFT_CHECK(t >= 0 && static_cast<uint32_t>(t) < vocab_size_, "shard '", path_, "': token ",
              t, " at position ", token_count_ + i, " is outside the vocabulary (vocab_size ",
              vocab_size_, "): the tokenizer and the shard's vocab_size disagree");
  }
  for (size_t i = 0; i < n; ++i) {
    const uint32_t t = static_cast<uint32_t>(tokens[i]);
    buf_.push_back(static_cast<unsigned char>(t));
    buf_.push_back(static_cast<unsigned char>(t >> 8));
    if (token_bytes_ == 4) {
      buf_.push_back(static_cast<unsigned char>(t >> 16));
      buf_.push_back(static_cast<unsigned char>(t >> 24));
    }
    if (buf_.size() >= kWriteBuffer) flush_buffer();
  }
  token_count_ += n;
}

void ShardWriter::finish() {
  OFT_CHECK(!finished_, "shard '", path_, "': finish() called twice");
  flush_buffer();
  unsigned char h[kShardHeaderBytes] = {};
  std::memcpy(h, kShardMagic, 8);
  put_u32(h + 8, kShardVersion);
  put_u32(h + 12, vocab_size_);
  put_u32(h + 16, token_bytes_);
  put_u32(h + 20, static_cast<uint32_t>(eot_id_));
  put_u64(h + 24, token_count_);
  put_u64(h + 32, crc_);
  put_u64(h + 40, documents_);
  write_all(h, sizeof h, 0);
  OFT_CHECK(::fsync(fd_) == 0, "cannot sync shard '", tmp_path_, "': ", errno_text(),
            ": check the output disk");
  const int fd = fd_;
  fd_ = -1;
  OFT_CHECK(::close(fd) == 0, "cannot close shard '", tmp_path_, "': ", errno_text(),
            ": check the output disk");
  OFT_CHECK(::rename(tmp_path_.c_str(), path_.c_str()) == 0, "cannot rename '", tmp_path_,
            "' to '", path_, "': ", errno_text(), ": check the output directory's permissions");
  finished_ = true;
  // Make the rename durable; failure here is not fatal (the data itself is synced).
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// ---------------------------------------------------------------- reader

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    h_ = o.h_;
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    body_ = o.body_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.body_ = nullptr;
  }
  return *this;
}

Shard::~Shard() { release(); }

void Shard::release() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  body_ = nullptr;
}

ShardHeader Shard::read_header(const std::string& path) {
  uint64_t file_bytes = 0;
  const int fd = open_for_read(path, &file_bytes);
  unsigned char h[kShardHeaderBytes];
  const ssize_t r = ::pread(fd, h, sizeof h, 0);
  ::close(fd);
  OFT_CHECK(r == static_cast<ssize_t>(sizeof h), "cannot read shard '", path,
            "': short read of the header: check the file");
  return parse_header(path, h, file_bytes);
}

Shard Shard::open(const std::string& path, bool verify_checksum) {
  uint64_t file_bytes = 0;
  const int fd = open_for_read(path, &file_bytes);
  OFT_CHECK(file_bytes <= SIZE_MAX, "shard '", path, "' is too large to map on this machine");
  void* m = ::mmap(nullptr, static_cast<size_t>(file_bytes), PROT_READ, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  OFT_CHECK(m != MAP_FAILED, "cannot memory-map shard '", path, "': ", std::strerror(map_errno),
            ": check the file and available address space");
  Shard s;
  s.path_ = path;
  s.map_ = m;
  s.map_bytes_ = static_cast<size_t>(file_bytes);
  const auto* bytes = static_cast<const unsigned char*>(m);
  s.h_ = parse_header(path, bytes, file_bytes);  // on throw, ~Shard unmaps
  s.body_ = bytes + kShardHeaderBytes;
  if (verify_checksum) s.verify_checksum();
  return s;
}

void Shard::verify_checksum() const {
  const uint64_t crc =
      crc_update(crc32(0L, Z_NULL, 0), body_, static_cast<size_t>(h_.token_count * h_.token_bytes));
  OFT_CHECK(crc == h_.checksum, "shard '", path_, "' failed its checksum (stored ",
            hex(h_.checksum), ", computed ", hex(crc), "): the file is corrupted; ", kRecreate);
}

int32_t Shard::token(size_t i) const {
  assert(i < h_.token_count);
  const unsigned char* p = body_ + i * h_.token_bytes;
  if (h_.token_bytes == 2) return static_cast<int32_t>(p[0] | (p[1] << 8));
  return static_cast<int32_t>(get_u32(p));
}

void Shard::copy(size_t begin, size_t n, int32_t* out) const {
  OFT_CHECK(begin <= h_.token_count && n <= h_.token_count - begin, "shard '", path_,
            "': token range [", begin, ", ", begin + n, ") is outside its ", h_.token_count,
            " tokens");
  const unsigned char* p = body_ + begin * h_.token_bytes;
  if (h_.token_bytes == 2) {
    for (size_t i = 0; i < n; ++i, p += 2) out[i] = static_cast<int32_t>(p[0] | (p[1] << 8));
  } else {
    for (size_t i = 0; i < n; ++i, p += 4) out[i] = static_cast<int32_t>(get_u32(p));
  }
}

}  // namespace oft
