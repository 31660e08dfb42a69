// AIMET-layout encodings export (format and offset convention in encodings.h).
#include "quant/encodings.h"

#include <cmath>

namespace oft::quant {

namespace {

nlohmann::json entry(const Encoding& e) {
  nlohmann::json j;
  j["bitwidth"] = e.bits;
  j["dtype"] = "int";
  j["is_symmetric"] = e.symmetric ? "True" : "False";
  j["max"] = e.max;
  j["min"] = e.min;
  j["offset"] = static_cast<int64_t>(std::llround(e.offset));
  j["scale"] = e.scale;
  return j;
}

}  // namespace

Encoding encoding_of(const std::string& name, const QGrid& g) {
  Encoding e;
  e.name = name;
  e.bits = g.bits;
  e.symmetric = g.symmetric;
  e.scale = g.delta;
  e.offset = g.qmin - g.zero_point;
  e.min = g.x_min();
  e.max = g.x_max();
  return e;
}

std::vector<Encoding> encodings_of(const std::string& name, const std::vector<QGrid>& grids) {
  std::vector<Encoding> out;
  out.reserve(grids.size());
  for (const QGrid& g : grids) out.push_back(encoding_of(name, g));
  return out;
}

nlohmann::json encodings_json(const std::vector<Encoding>& activations,
                              const std::vector<Encoding>& params) {
  nlohmann::json act = nlohmann::json::object(), par = nlohmann::json::object();
  for (const Encoding& e : activations) {
    OFT_CHECK(!e.name.empty(), "encodings: an activation encoding has an empty name");
    OFT_CHECK(!act.contains(e.name), "encodings: activation '", e.name,
              "' is listed twice (activations are quantized per tensor: one encoding each)");
    act[e.name] = nlohmann::json::array({entry(e)});
  }
  for (const Encoding& e : params) {
    OFT_CHECK(!e.name.empty(), "encodings: a parameter encoding has an empty name");
    if (!par.contains(e.name)) par[e.name] = nlohmann::json::array();
    par[e.name].push_back(entry(e));
  }
  return {{"version", "0.6.1"}, {"activation_encodings", act}, {"param_encodings", par}};
}

}  // namespace oft::quant
