// Atomic file/directory publication with fsync, whole-file reads and CRC-32 (see atomic_file.h).
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"

namespace oft {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Parent directory of `path` ("." for a bare file name). Trailing slashes are ignored.
std::string parent_dir(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// A hint appended to "cannot write" errors for the common causes.
std::string write_hint(int err, const std::string& path) {
  std::string dir = parent_dir(path);
  switch (err) {
    case ENOENT: return " (does the directory '" + dir + "' exist?)";
    case EACCES:
    case EPERM: return " (check write permission on the directory '" + dir + "')";
    case EROFS: return " (the filesystem is read-only; choose another output directory)";
    case ENOSPC:
    case EDQUOT: return " (free some disk space or choose another output directory)";
    default: return "";
  }
}

void fsync_path(const std::string& path, bool is_dir) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0));
  if (fd < 0) fail("cannot sync ", path, ": ", errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some filesystems do not support fsync on directories; that is not a data-loss error.
  if (rc != 0 && !(is_dir && (err == EINVAL || err == EBADF)))
    fail("cannot sync ", path, ": ", errno_text(err));
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

FilePtr open_for_read(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    fail("cannot read ", path, ": ", errno_text(err),
         err == ENOENT ? " (check the path)" : "");
  }
  FilePtr fp(f);
  struct stat st;
  if (::fstat(::fileno(f), &st) == 0 && S_ISDIR(st.st_mode))
    fail("cannot read ", path, ": it is a directory, expected a file");
  return fp;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// AtomicFileWriter

AtomicFileWriter::AtomicFileWriter(const std::string& path)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
  OFT_CHECK(!path.empty(), "cannot write a file with an empty path");
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) {
    int err = errno;
    fail("cannot write ", path_, ": ", errno_text(err), write_hint(err, path_));
  }
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& o) noexcept
    : path_(std::move(o.path_)),
      tmp_(std::move(o.tmp_)),
      f_(o.f_),
      written_(o.written_),
      committed_(o.committed_) {
  o.f_ = nullptr;
  o.committed_ = true;  // the moved-from writer owns nothing to clean up
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) abandon();
}

void AtomicFileWriter::abandon() noexcept {
  if (f_) {
    std::fclose(f_);
    f_ = nullptr;
  }
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  committed_ = true;  // nothing left to do
}

void AtomicFileWriter::fail_io(int err, const char* what) {
  if (err == 0) err = EIO;
  abandon();
  fail("cannot write ", path_, ": ", errno_text(err), what, write_hint(err, path_));
}

void AtomicFileWriter::write(const void* data, size_t n) {
  OFT_ASSERT(f_ != nullptr && !committed_, "write to a committed or failed AtomicFileWriter for ",
             path_);
  if (n == 0) return;
  size_t w = std::fwrite(data, 1, n, f_);
  if (w != n) fail_io(errno ? errno : EIO, "");
  written_ += n;
}

void AtomicFileWriter::commit() {
  OFT_ASSERT(f_ != nullptr && !committed_, "commit of a committed or failed AtomicFileWriter for ",
             path_);
  if (std::fflush(f_) != 0) fail_io(errno, "");
  if (::fsync(::fileno(f_)) != 0) fail_io(errno, " (fsync)");
  std::FILE* f = f_;
  f_ = nullptr;
  if (std::fclose(f) != 0) fail_io(errno, " (close)");
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    fail_io(err, (" (renaming " + tmp_ + " into place)").c_str());
  }
  committed_ = true;
  fsync_directory(parent_dir(path_));
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFileWriter w(path);
  w.write(bytes.data(), bytes.size());
  w.commit();
}

// ---------------------------------------------------------------------------------------------
// Directories

void fsync_directory(const std::string& dir) { fsync_path(dir, /*is_dir=*/true); }

void commit_directory_atomic(const std::string& tmp_dir_in, const std::string& final_dir_in) {
  std::string tmp_dir = tmp_dir_in, final_dir = final_dir_in;
  while (tmp_dir.size() > 1 && tmp_dir.back() == '/') tmp_dir.pop_back();
  while (final_dir.size() > 1 && final_dir.back() == '/') final_dir.pop_back();
  std::error_code ec;
  OFT_CHECK(fs::is_directory(tmp_dir, ec), "cannot publish ", final_dir, ": staging directory ",
            tmp_dir, " does not exist or is not a directory");

  // Make every file and subdirectory durable before the rename makes them visible.
  for (auto it = fs::recursive_directory_iterator(tmp_dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::directory_entry& e = *it;
    std::error_code ec2;
    if (e.is_symlink(ec2)) continue;
    if (e.is_directory(ec2)) {
      fsync_path(e.path().string(), true);
    } else if (e.is_regular_file(ec2)) {
      fsync_path(e.path().string(), false);
    }
  }
  if (ec) fail("cannot publish ", final_dir, ": cannot list ", tmp_dir, ": ", ec.message());
  fsync_path(tmp_dir, true);

  std::string aside;
  if (fs::exists(fs::symlink_status(final_dir, ec))) {
    aside = final_dir + ".old." + std::to_string(::getpid());
    fs::remove_all(aside, ec);  // stale leftover of an earlier crash, if any
    if (std::rename(final_dir.c_str(), aside.c_str()) != 0) {
      int err = errno;
      fail("cannot replace ", final_dir, ": cannot move it aside to ", aside, ": ",
           errno_text(err), write_hint(err, final_dir));
    }
  }
  if (std::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    int err = errno;
    if (!aside.empty()) std::rename(aside.c_str(), final_dir.c_str());  // restore the old one
    fail("cannot publish ", tmp_dir, " as ", final_dir, ": ", errno_text(err),
         err == EXDEV ? " (both must be on the same filesystem)" : write_hint(err, final_dir));
  }
  std::string parent = parent_dir(final_dir);
  fsync_directory(parent);
  std::string tmp_parent = parent_dir(tmp_dir);
  if (fs::path(tmp_parent).lexically_normal() != fs::path(parent).lexically_normal())
    fsync_directory(tmp_parent);
  if (!aside.empty()) {
    fs::remove_all(aside, ec);
    // Failing to delete the old copy leaves a stale directory but the commit itself succeeded.
  }
}

// ---------------------------------------------------------------------------------------------
// Reads and checksums

std::string read_file(const std::string& path) {
  FilePtr f = open_for_read(path);
  std::string out;
  struct stat st;
  if (::fstat(::fileno(f.get()), &st) == 0 && st.st_size > 0)
    out.reserve(static_cast<size_t>(st.st_size));
  std::vector<char> buf(1 << 20);
  while (true) {
    size_t n = std::fread(buf.data(), 1, buf.size(), f.get());
    out.append(buf.data(), n);
    if (n < buf.size()) break;
  }
  if (std::ferror(f.get())) fail("cannot read ", path, ": ", errno_text(errno ? errno : EIO));
  return out;
}

uint32_t crc32_bytes(const void* data, size_t n) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const Bytef* p = static_cast<const Bytef*>(data);
  while (n > 0) {
    uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

uint32_t crc32_file(const std::string& path) {
  FilePtr f = open_for_read(path);
  uLong crc = ::crc32(0L, Z_NULL, 0);
  std::vector<unsigned char> buf(1 << 20);
  while (true) {
    size_t n = std::fread(buf.data(), 1, buf.size(), f.get());
    if (n) crc = ::crc32(crc, buf.data(), static_cast<uInt>(n));
    if (n < buf.size()) break;
  }
  if (std::ferror(f.get())) fail("cannot read ", path, ": ", errno_text(errno ? errno : EIO));
  return static_cast<uint32_t>(crc);
}

std::string crc32_hex(uint32_t crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  return buf;
}

}  // namespace oft
