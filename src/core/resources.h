// Locating oft's shipped resources (data/ with the embedded corpus and tokenizer assets,
// configs/ with the presets). Search order: $OFT_HOME, then the directories above the running
// executable, then the source tree the binary was built from.
#pragma once

#include <string>

namespace oft {

// Absolute path of the oft source/install root (the directory holding data/ and configs/).
// Throws oft::Error explaining how to set OFT_HOME when nothing is found.
std::string resource_root();

// resource_root() + "/" + relative, checked to exist.
std::string resource_path(const std::string& relative);

}  // namespace oft
