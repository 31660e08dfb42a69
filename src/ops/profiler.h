// Per-op time breakdown for `oft bench --profile`: while the profiler runs, ops::backend()
// hands out a wrapper around the real backend that brackets every op with device timestamps
// (CUDA events on the GPU, the host clock on the CPU), so the totals are device time without
// synchronising between ops. Costs nothing when not started.
#pragma once

#include <string>
#include <vector>

#include "ops/ops.h"

namespace oft::ops {

struct ProfileRow {
  std::string name;
  double total_ms = 0;
  int64_t calls = 0;
};

class Profiler {
 public:
  static void start();
  // Stops, waits for the device, and returns per-op totals sorted by time (descending).
  static std::vector<ProfileRow> stop();
  // The wrapper for device d while profiling, else nullptr (used by ops::backend()).
  static Backend* active(Device d);
};

// Device timestamps on the GPU's op stream (implemented by the CUDA runtime; zeros without it).
int device_mark();                         // records a timestamp on the op stream; its id
double device_elapsed_ms(int a, int b);    // after device_synchronize()
void device_marks_reset();

}  // namespace oft::ops
