// Quantization encodings export in the AIMET encodings-file layout (version 0.6.1), the format
// Qualcomm's toolchain (QNN / AI Engine Direct) consumes:
//
//   {"version": "0.6.1",
//    "activation_encodings": {NAME: [ENC]},
//    "param_encodings":      {NAME: [ENC, ENC, ...]}}      (one ENC per output channel)
//   ENC = {"bitwidth": b, "dtype": "int", "is_symmetric": "True"|"False",
//          "max": f, "min": f, "offset": i, "scale": f}
//
// AIMET's offset lives on the UNSIGNED grid q in [0, 2^b - 1]: x = scale * (q + offset)
// (QNN's Qnn_BwScaleOffset_t: float = (quantized + offset) * scale). In QGrid terms
//   scale = delta, offset = qmin - zero_point, min = delta * (qmin - zp), max = delta * (qmax - zp).
// For asymmetric and unsigned symmetric grids (qmin = 0) this is offset = -zero_point; for signed
// symmetric grids it is -2^(b-1) (e.g. -128 at 8 bits, -8 at 4 bits), which is what AIMET writes
// for symmetric encodings (min = -128 * scale, max = 127 * scale).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/quantizer.h"

namespace oft::quant {

struct Encoding {
  std::string name;
  int bits = 8;
  bool symmetric = false;
  double min = 0, max = 0, scale = 1, offset = 0;
};

Encoding encoding_of(const std::string& name, const QGrid& g);
// One entry per output channel, all named `name` (per-channel weights).
std::vector<Encoding> encodings_of(const std::string& name, const std::vector<QGrid>& grids);

// Activations: one entry per name (a repeated name is an error). Params: entries with the same
// name are collected, in order, into that name's list (per-channel).
nlohmann::json encodings_json(const std::vector<Encoding>& activations,
                              const std::vector<Encoding>& params);

}  // namespace oft::quant
