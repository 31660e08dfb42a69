// One process per GPU on this host (see launch.h).
#include "dist/launch.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "dist/communicator.h"
#include "ops/ops.h"

namespace oft::dist {

namespace {
std::vector<pid_t> g_children;

void forward_signal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) kill(p, sig);
}
}  // namespace

int visible_gpus() {
  if (!ops::cuda_available()) return 0;
  return ops::cuda_device_count();
}

bool launch_if_requested(int gpus, const std::vector<std::string>& argv) {
  const DistEnv env = dist_env_from_environment();
  if (env.distributed) {
    OFT_CHECK(gpus == 1 || gpus == env.world, "--gpus ", gpus, " but this process is rank ",
              env.rank, " of ", env.world, " (OFT_WORLD_SIZE / mpirun): give --gpus only "
              "without mpirun");
    return false;
  }
  if (gpus == 1) return false;
  const int visible = visible_gpus();
  const int n = gpus == 0 ? visible : gpus;
  OFT_CHECK(n >= 1 && n <= visible, "--gpus ", gpus, ": ", visible, " GPU(s) are visible",
            visible == 0 ? " (" + ops::cuda_unavailable_reason() + ")" : std::string(),
            ": pass --gpus 1..", std::max(visible, 1));
  OFT_CHECK(!argv.empty(), "--gpus: the command line is not known");
  if (const int rc = launch_local(n, argv); rc != 0) std::exit(rc);
  return true;
}

int launch_local(int n, const std::vector<std::string>& argv) {
  OFT_CHECK(n >= 1, "--gpus ", n, ": give at least 1");
  const long stamp = static_cast<long>(
      std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007L);
  const char* tmp = std::getenv("TMPDIR");
  const std::string rendezvous = std::string(tmp && *tmp ? tmp : "/tmp") + "/oft-rendezvous-" +
                                 std::to_string(getpid()) + "-" + std::to_string(stamp);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  for (int r = 0; r < n; ++r) {
    const pid_t pid = fork();
    OFT_CHECK(pid >= 0, "--gpus ", n, ": could not start rank ", r, ": ", std::strerror(errno));
    if (pid == 0) {
      setenv("OFT_RANK", std::to_string(r).c_str(), 1);
      setenv("OFT_LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("OFT_WORLD_SIZE", std::to_string(n).c_str(), 1);
      setenv("OFT_RENDEZVOUS", rendezvous.c_str(), 1);
      execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "oft: error: rank %d: cannot run /proc/self/exe: %s\n", r,
                   std::strerror(errno));
      _exit(127);
    }
    g_children.push_back(pid);
  }
  int status_out = 0, alive = n;
  while (alive > 0) {
    int st = 0;
    const pid_t pid = waitpid(-1, &st, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (pid_t& c : g_children)
      if (c == pid) c = -1;
    --alive;
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0 && status_out == 0) {
      status_out = code;
      // One rank failed: the others would wait for it forever in a collective.
      forward_signal(SIGTERM);
    }
  }
  g_children.clear();
  std::remove(rendezvous.c_str());
  return status_out;
}

}  // namespace oft::dist
