// Typed configuration registry: named keys ("model.n_layer") bound to struct fields, set from
// YAML files (nested maps flatten to dotted keys) and from `key=value` command-line overrides
// (Hydra style). Unknown keys, unparsable values and out-of-range values are errors naming the
// source (file or "command line"), the key and the fix; unknown keys list the valid ones.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace oft {

class ConfigRegistry {
 public:
  void add(const std::string& key, int64_t* p, const std::string& doc, int64_t lo, int64_t hi);
  void add(const std::string& key, double* p, const std::string& doc, double lo, double hi);
  void add(const std::string& key, bool* p, const std::string& doc);
  void add(const std::string& key, std::string* p, const std::string& doc,
           std::vector<std::string> choices = {});
  // Another accepted name for `key` (e.g. the source systems' flag names).
  void alias(const std::string& alias, const std::string& key);

  // Sets one key from its textual value; `source` names where it came from for errors.
  void set(const std::string& key, const std::string& value, const std::string& source);
  // Applies "key=value" strings.
  void apply_overrides(const std::vector<std::string>& kvs);
  // Loads a YAML file: nested maps are flattened; a top-level `base: PRESET` loads that preset
  // first (through `resolve_preset`). Every key must be known.
  void load_yaml_file(const std::string& path,
                      const std::function<std::string(const std::string&)>& resolve_preset);
  void load_yaml_text(const std::string& text, const std::string& source,
                      const std::function<std::string(const std::string&)>& resolve_preset);

  // Resolves a user-given key (exact, alias, or unique last component) to its canonical key.
  std::string canonical(const std::string& key, const std::string& source) const;
  std::vector<std::string> keys() const;
  std::string get_string(const std::string& key) const;  // current value as text
  std::string to_yaml() const;                           // nested, in registration order
  nlohmann::json to_json() const;                        // flat {key: value}
  std::string help() const;                              // one line per key with its doc

 private:
  enum class Kind { Int, Float, Bool, String };
  struct Field {
    std::string key, doc;
    Kind kind;
    void* ptr;
    double lo = 0, hi = 0;
    std::vector<std::string> choices;
  };
  Field& field(const std::string& canonical_key);
  const Field& field(const std::string& canonical_key) const;
  std::vector<Field> fields_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> aliases_;
};

}  // namespace oft
