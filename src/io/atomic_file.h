// Crash-safe file output and small file utilities: atomic whole-file writes (tmp file, fsync,
// rename, fsync of the parent directory), atomic replacement of a whole directory, whole-file
// reads and CRC-32 checksums. A reader never observes a half-written file under the final name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace oft {

// Writes `bytes` to `path` atomically: the data goes to `path.tmp.<pid>`, is flushed and fsynced,
// renamed over `path`, and the parent directory is fsynced. The parent directory must exist.
// Throws oft::Error naming the path and the OS error text on any failure (the tmp file is removed).
void write_file_atomic(const std::string& path, std::string_view bytes);

// Streaming form of write_file_atomic. Nothing is visible under `path` until commit(); a writer
// destroyed without commit() removes its tmp file and leaves any existing `path` untouched.
// Not thread-safe; two writers of the same path in one process would share the tmp name.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  AtomicFileWriter(AtomicFileWriter&& o) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flush, fsync, rename over the final path, fsync the parent directory.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& tmp_path() const { return tmp_; }
  uint64_t bytes_written() const { return written_; }

 private:
  [[noreturn]] void fail_io(int err, const char* what);  // removes tmp, then throws
  void abandon() noexcept;

  std::string path_;
  std::string tmp_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Publishes a fully written directory: fsyncs every file (recursively) in `tmp_dir` and the
// directory itself, then renames tmp_dir -> final_dir and fsyncs final_dir's parent. If
// final_dir already exists it is first renamed aside to `final_dir.old.<pid>` and removed only
// after the new directory is in place (restored if the rename fails). Both must be on one
// filesystem.
void commit_directory_atomic(const std::string& tmp_dir, const std::string& final_dir);

// fsync of a directory (makes renames/creations inside it durable). Throws on error.
void fsync_directory(const std::string& dir);

// Whole file contents. Throws oft::Error "cannot read PATH: <reason>" if missing or unreadable.
std::string read_file(const std::string& path);

// CRC-32 (zlib / IEEE 802.3 polynomial), e.g. crc32_bytes("123456789", 9) == 0xCBF43926.
uint32_t crc32_bytes(const void* data, size_t n);
// Streaming CRC-32 of a file's contents (constant memory). Throws like read_file.
uint32_t crc32_file(const std::string& path);
// Eight lowercase hex digits, zero padded: crc32_hex(0xCBF43926) == "cbf43926".
std::string crc32_hex(uint32_t crc);

}  // namespace oft
