// The built-in launcher of `oft train --gpus N`: runs the same command as N processes on this
// host, one per GPU, with OFT_RANK / OFT_WORLD_SIZE / OFT_LOCAL_RANK / OFT_RENDEZVOUS set, and
// waits for them. When one fails the others are stopped, and the launcher exits with the first
// failure's status; Ctrl-C reaches every rank.
#pragma once

#include <string>
#include <vector>

namespace oft::dist {

// Runs `argv` (argv[0]: the program; /proc/self/exe is executed) as `n` ranks; returns the exit
// status to give (0 when every rank succeeded).
int launch_local(int n, const std::vector<std::string>& argv);

// GPUs visible to this process (0 without CUDA).
int visible_gpus();

// The `--gpus N` option of `oft train` / `oft bench` (0 = every visible GPU). Outside a launch,
// with N != 1: runs this command line (`argv`) as the ranks and returns true once they are done
// (exiting with the first failing rank's status). Inside one, or with N == 1: checks N agrees
// with the launch and returns false, and the caller does its work as this rank.
bool launch_if_requested(int gpus, const std::vector<std::string>& argv);

}  // namespace oft::dist
