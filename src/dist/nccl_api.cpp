// Run-time loading of NCCL (see nccl_api.h).
#include "dist/nccl_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

#include "core/error.h"

namespace oft::dist {

namespace {

template <class F>
void bind(void* lib, F& fn, const char* name, const std::string& path) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  OFT_CHECK(fn != nullptr, path, ": symbol ", name, " not found: NCCL 2.12 or newer is needed");
}

NcclApi load() {
  std::vector<std::string> tried;
  if (const char* env = std::getenv("OFT_NCCL_LIBRARY"); env && *env)
    tried.push_back(env);
  else
    tried = {"libnccl.so.2", "libnccl.so", "/usr/local/cuda/lib/libnccl.so.2",
             "/usr/local/cuda/lib64/libnccl.so.2", "/usr/lib/x86_64-linux-gnu/libnccl.so.2"};
  void* lib = nullptr;
  std::string path, errors;
  for (const std::string& t : tried) {
    lib = dlopen(t.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) {
      path = t;
      break;
    }
    const char* e = dlerror();
    errors += "\n  " + t + ": " + (e ? e : "not found");
  }
  OFT_CHECK(lib != nullptr, "multi-GPU training needs NCCL (libnccl.so.2) and none could be "
            "loaded:", errors, "\nInstall it (Debian: apt-get install libnccl2; or the NCCL that "
            "ships with PyTorch: pip's nvidia-nccl-cu* package), then set OFT_NCCL_LIBRARY=/path/"
            "to/libnccl.so.2 or add its directory to LD_LIBRARY_PATH");
  NcclApi a;
  a.path = path;
  bind(lib, a.GetVersion, "ncclGetVersion", path);
  bind(lib, a.GetUniqueId, "ncclGetUniqueId", path);
  bind(lib, a.CommInitRank, "ncclCommInitRank", path);
  bind(lib, a.CommDestroy, "ncclCommDestroy", path);
  bind(lib, a.CommAbort, "ncclCommAbort", path);
  bind(lib, a.AllReduce, "ncclAllReduce", path);
  bind(lib, a.ReduceScatter, "ncclReduceScatter", path);
  bind(lib, a.AllGather, "ncclAllGather", path);
  bind(lib, a.Broadcast, "ncclBroadcast", path);
  bind(lib, a.GroupStart, "ncclGroupStart", path);
  bind(lib, a.GroupEnd, "ncclGroupEnd", path);
  bind(lib, a.GetErrorString, "ncclGetErrorString", path);
  a.GetLastError = reinterpret_cast<const char* (*)(NcclComm)>(dlsym(lib, "ncclGetLastError"));
  OFT_CHECK(a.GetVersion(&a.version) == 0, path, ": ncclGetVersion failed");
  OFT_CHECK(a.version >= 21200, path, " is NCCL ", a.version,
            ": oft needs NCCL 2.12 or newer (ncclAvg, in-place collectives)");
  return a;
}

}  // namespace

const NcclApi& nccl() {
  static const NcclApi api = load();
  return api;
}

void nccl_check(int result, const char* what, NcclComm comm) {
  if (result == 0) return;
  std::string msg = "NCCL error " + std::to_string(result);
  const NcclApi& a = nccl();  // loaded: every caller got its function from it
  msg += std::string(" (") + a.GetErrorString(result) + ")";
  if (a.GetLastError) {
    const char* last = a.GetLastError(comm);
    if (last && *last) msg += ": " + std::string(last);
  }
  OFT_CHECK(false, what, ": ", msg, ". Set NCCL_DEBUG=INFO for NCCL's own account of it");
}

}  // namespace oft::dist
