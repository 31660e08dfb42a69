// ConfigRegistry implementation (see config.h).
#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace oft {

namespace {
// Shortest text that reads back as exactly `v`.
std::string fmt_double(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, end);
  // Keep floats recognisable as floats in YAML/JSON output.
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}
std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string r;
  for (size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + v[i];
  return r;
}
}  // namespace

void ConfigRegistry::add(const std::string& key, int64_t* p, const std::string& doc, int64_t lo,
                         int64_t hi) {
  index_[key] = fields_.size();
  fields_.push_back({key, doc, Kind::Int, p, double(lo), double(hi), {}});
}
void ConfigRegistry::add(const std::string& key, double* p, const std::string& doc, double lo,
                         double hi) {
  index_[key] = fields_.size();
  fields_.push_back({key, doc, Kind::Float, p, lo, hi, {}});
}
void ConfigRegistry::add(const std::string& key, bool* p, const std::string& doc) {
  index_[key] = fields_.size();
  fields_.push_back({key, doc, Kind::Bool, p, 0, 0, {}});
}
void ConfigRegistry::add(const std::string& key, std::string* p, const std::string& doc,
                         std::vector<std::string> choices) {
  index_[key] = fields_.size();
  fields_.push_back({key, doc, Kind::String, p, 0, 0, std::move(choices)});
}
void ConfigRegistry::alias(const std::string& alias, const std::string& key) {
  OFT_ASSERT(index_.count(key), "alias to unknown key ", key);
  aliases_[alias] = key;
}

ConfigRegistry::Field& ConfigRegistry::field(const std::string& k) { return fields_[index_.at(k)]; }
const ConfigRegistry::Field& ConfigRegistry::field(const std::string& k) const {
  return fields_[index_.at(k)];
}

std::vector<std::string> ConfigRegistry::keys() const {
  std::vector<std::string> r;
  for (const auto& f : fields_) r.push_back(f.key);
  return r;
}

std::string ConfigRegistry::canonical(const std::string& key, const std::string& source) const {
  if (index_.count(key)) return key;
  if (auto a = aliases_.find(key); a != aliases_.end()) return a->second;
  std::vector<std::string> matches;
  for (const auto& f : fields_) {
    auto dot = f.key.rfind('.');
    if (dot != std::string::npos && f.key.substr(dot + 1) == key) matches.push_back(f.key);
  }
  if (matches.size() == 1) return matches[0];
  if (matches.size() > 1)
    fail(source, ": key '", key, "' is ambiguous; write one of: ", join(matches, ", "));
  fail(source, ": unknown config key '", key, "'. Valid keys: ", join(keys(), ", "));
}

void ConfigRegistry::set(const std::string& user_key, const std::string& value,
                         const std::string& source) {
  const std::string key = canonical(user_key, source);
  Field& f = field(key);
  auto bad = [&](const std::string& what) {
    fail(source, ": ", key, ": ", what, " (got '", value, "')");
  };
  switch (f.kind) {
    case Kind::Int: {
      int64_t v = 0;
      std::string s = value;
      // Accept "1e6"-style and "1_000_000" integers as researchers write them.
      s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
      auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec != std::errc() || ptr != s.data() + s.size()) {
        char* end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != 0 || d != std::floor(d) || std::fabs(d) > 9e15)
          bad("expected an integer");
        v = static_cast<int64_t>(d);
      }
      if (v < f.lo || v > f.hi)
        bad(cat("must be in [", int64_t(f.lo), ", ",
                f.hi >= 9e18 ? std::string("inf") : std::to_string(int64_t(f.hi)), "]"));
      *static_cast<int64_t*>(f.ptr) = v;
      break;
    }
    case Kind::Float: {
      char* end = nullptr;
      double d = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != 0 || !std::isfinite(d)) bad("expected a finite number");
      if (d < f.lo || d > f.hi)
        bad(cat("must be in [", fmt_double(f.lo), ", ",
                std::isinf(f.hi) ? std::string("inf") : fmt_double(f.hi), "]"));
      *static_cast<double*>(f.ptr) = d;
      break;
    }
    case Kind::Bool: {
      std::string v = value;
      std::transform(v.begin(), v.end(), v.begin(), ::tolower);
      if (v == "true" || v == "1" || v == "yes" || v == "on") {
        *static_cast<bool*>(f.ptr) = true;
      } else if (v == "false" || v == "0" || v == "no" || v == "off") {
        *static_cast<bool*>(f.ptr) = false;
      } else {
        bad("expected true or false");
      }
      break;
    }
    case Kind::String: {
      if (!f.choices.empty() &&
          std::find(f.choices.begin(), f.choices.end(), value) == f.choices.end())
        bad("must be one of " + join(f.choices, ", "));
      *static_cast<std::string*>(f.ptr) = value;
      break;
    }
  }
}

void ConfigRegistry::apply_overrides(const std::vector<std::string>& kvs) {
  for (const auto& kv : kvs) {
    auto eq = kv.find('=');
    OFT_CHECK(eq != std::string::npos && eq > 0, "command line: '", kv,
              "' is not a key=value override (example: train.lr=3e-4)");
    set(kv.substr(0, eq), kv.substr(eq + 1), "command line");
  }
}

namespace {
void flatten(const YAML::Node& node, const std::string& prefix, const std::string& source,
             std::vector<std::pair<std::string, std::string>>& out) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    const std::string full = prefix.empty() ? k : prefix + "." + k;
    const YAML::Node& v = it->second;
    if (v.IsMap()) {
      flatten(v, full, source, out);
    } else if (v.IsScalar()) {
      out.emplace_back(full, v.Scalar());
    } else if (v.IsNull()) {
      out.emplace_back(full, "");
    } else {
      fail(source, ": ", full, ": expected a single value, not a list");
    }
  }
}
}  // namespace

void ConfigRegistry::load_yaml_text(
    const std::string& text, const std::string& source,
    const std::function<std::string(const std::string&)>& resolve_preset) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(source, ": malformed YAML at line ", e.mark.line + 1, ", column ", e.mark.column + 1,
         ": ", e.msg);
  }
  if (root.IsNull()) return;
  OFT_CHECK(root.IsMap(), source, ": expected a YAML mapping of config keys at the top level");
  std::vector<std::pair<std::string, std::string>> kvs;
  flatten(root, "", source, kvs);
  for (const auto& [k, v] : kvs) {
    if (k == "base") {
      OFT_CHECK(resolve_preset != nullptr, source, ": 'base' is not supported here");
      load_yaml_file(resolve_preset(v), resolve_preset);
    }
  }
  for (const auto& [k, v] : kvs)
    if (k != "base") set(k, v, source);
}

void ConfigRegistry::load_yaml_file(
    const std::string& path, const std::function<std::string(const std::string&)>& resolve) {
  std::error_code ec;
  OFT_CHECK(std::filesystem::is_regular_file(path, ec), path,
            ": config file not found (give a preset name or a path to a .yaml file)");
  std::ifstream in(path);
  OFT_CHECK(in.good(), path, ": cannot read config file");
  std::stringstream ss;
  ss << in.rdbuf();
  load_yaml_text(ss.str(), path, resolve);
}

std::string ConfigRegistry::get_string(const std::string& key) const {
  const Field& f = field(key);
  switch (f.kind) {
    case Kind::Int: return std::to_string(*static_cast<int64_t*>(f.ptr));
    case Kind::Float: return fmt_double(*static_cast<double*>(f.ptr));
    case Kind::Bool: return *static_cast<bool*>(f.ptr) ? "true" : "false";
    case Kind::String: return *static_cast<std::string*>(f.ptr);
  }
  return "";
}

nlohmann::json ConfigRegistry::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : fields_) {
    switch (f.kind) {
      case Kind::Int: j[f.key] = *static_cast<int64_t*>(f.ptr); break;
      case Kind::Float: j[f.key] = *static_cast<double*>(f.ptr); break;
      case Kind::Bool: j[f.key] = *static_cast<bool*>(f.ptr); break;
      case Kind::String: j[f.key] = *static_cast<std::string*>(f.ptr); break;
    }
  }
  return j;
}

std::string ConfigRegistry::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  for (const auto& f : fields_) {
    auto dot = f.key.find('.');
    std::string sec = f.key.substr(0, dot), name = f.key.substr(dot + 1);
    if (sec != section) {
      if (!section.empty()) out << YAML::EndMap;
      out << YAML::Key << sec << YAML::Value << YAML::BeginMap;
      section = sec;
    }
    out << YAML::Key << name << YAML::Value;
    if (f.kind == Kind::String) {
      out << YAML::DoubleQuoted << get_string(f.key);
    } else {
      out << get_string(f.key);
    }
  }
  if (!section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string ConfigRegistry::help() const {
  std::string r;
  for (const auto& f : fields_) r += "  " + f.key + " = " + get_string(f.key) + "  # " + f.doc + "\n";
  return r;
}

}  // namespace oft
