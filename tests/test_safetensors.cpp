// Safetensors writer/reader (src/io/safetensors.h): round trips, byte-exact layout against
// hand-built reference bytes, dtype conversion on load, and every malformed-file error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include "core/bf16.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::error_of;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("oft_safetensors_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

#define EXPECT_ERROR_HAS(stmt, text)                                               \
  do {                                                                             \
    std::string msg_ = error_of([&] { stmt; });                                    \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message was: " << msg_;      \
  } while (0)

// A safetensors file from a raw JSON header (padded with spaces here) and a data buffer.
std::string craft(std::string json, const std::string& data) {
  json.append((8 - json.size() % 8) % 8, ' ');
  uint64_t n = json.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"f32", Tensor::from_vector({2, 3}, {1.5, -2, 3.25, 0, 1e-8, -7e5}, DType::F32)},
      {"f64", Tensor::from_vector({4}, {1.0 / 3, -1e300, 2.5e-310, 42}, DType::F64)},
      {"bf16", Tensor::from_vector({3, 2}, {1, -0.5, 3.140625, 256, -1e-3, 65280}, DType::BF16)},
      {"i32", Tensor::from_vector({5}, {0, -1, 2147483647, -2147483648.0, 17}, DType::I32)},
      {"empty", Tensor::empty({0, 3}, DType::F32)},
      {"empty_bf16", Tensor::empty({4, 0}, DType::BF16)},
      {"scalar", Tensor::from_vector({}, {2.75}, DType::F64)},
      {"scalar_i", Tensor::from_vector({}, {-9}, DType::I32)},
      {"layers.0.attn.weight", Tensor::from_vector({1, 1, 2}, {3, 4}, DType::F32).slice(0, 1)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "12"}, {"note", "a \"q\"\n"}};
  save_safetensors(p("m.safetensors"), ts, meta);
  EXPECT_EQ(read_file(p("m.safetensors")), serialize_safetensors(ts, meta));
  for (const auto& e : fs::directory_iterator(dir_))  // no tmp file left
    EXPECT_EQ(e.path().filename(), "m.safetensors");

  SafetensorsFile f = SafetensorsFile::open(p("m.safetensors"));
  EXPECT_EQ(f.size(), ts.size());
  EXPECT_EQ(f.names(), (std::vector<std::string>{"bf16", "empty", "empty_bf16", "f32", "f64",
                                                 "i32", "layers.0.attn.weight", "scalar",
                                                 "scalar_i"}));
  EXPECT_EQ(f.metadata(), meta);
  for (const auto& [name, t] : ts) {
    ASSERT_TRUE(f.contains(name));
    EXPECT_EQ(f.info(name).dtype, safetensors_dtype_name(t.dtype()));
    EXPECT_EQ(f.info(name).shape, t.shape());
    EXPECT_EQ(f.info(name).nbytes(), t.nbytes());
    Tensor l = f.load(name);
    EXPECT_TRUE(same_bytes(l, t)) << name;
  }
  EXPECT_EQ(f.info("scalar").shape, Shape{});
  EXPECT_EQ(f.load("scalar").item(), 2.75);
  EXPECT_FALSE(f.contains("nope"));

  // Loaded tensors outlive the file object.
  Tensor keep = SafetensorsFile::open(p("m.safetensors")).load("f64");
  EXPECT_EQ(keep.to_vector()[3], 42);
}

TEST_F(SafetensorsTest, ByteExactTwoTensorsWithMetadata) {
  // Given out of name order; the reference writer sorts same-dtype tensors by name.
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"weight", Tensor::from_vector({2, 2}, {1, 2, 3, 4})},
      {"bias", Tensor::from_vector({2}, {0.5, -1})},
  };
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}"
      "   ";  // 149 bytes of JSON + 3 spaces = 152 = 0x98
  ASSERT_EQ(header.size(), 152u);
  std::string expected = std::string("\x98\0\0\0\0\0\0\0", 8) + header +
                         std::string("\x00\x00\x00\x3f" "\x00\x00\x80\xbf"   // bias: 0.5, -1
                                     "\x00\x00\x80\x3f" "\x00\x00\x00\x40"   // weight: 1, 2
                                     "\x00\x00\x40\x40" "\x00\x00\x80\x40",  //         3, 4
                                     24);
  save_safetensors(p("two.safetensors"), ts, {{"format", "pt"}});
  EXPECT_EQ(read_file(p("two.safetensors")), expected);
  EXPECT_EQ(serialize_safetensors(ts, {{"format", "pt"}}), expected);

  SafetensorsFile f = SafetensorsFile::open(p("two.safetensors"));
  EXPECT_EQ(f.info("weight").begin, 8u);
  EXPECT_EQ(f.info("weight").end, 24u);
  EXPECT_EQ(f.load("weight").to_vector(), (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(f.load("bias").to_vector(), (std::vector<double>{0.5, -1}));
}

TEST_F(SafetensorsTest, ByteExactReferenceLayouts) {
  // One tensor, no metadata: 65 bytes of JSON padded with 7 spaces to N = 72 ('H').
  std::vector<std::pair<std::string, Tensor>> one = {
      {"attn0", Tensor::from_vector({1, 1, 2, 3}, {0, 1, 2, 3, 4, 5})}};
  std::string expected =
      std::string("H\0\0\0\0\0\0\0", 8) +
      "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       " +
      std::string("\x00\x00\x00\x00" "\x00\x00\x80\x3f" "\x00\x00\x00\x40"
                  "\x00\x00\x40\x40" "\x00\x00\x80\x40" "\x00\x00\xa0\x40", 24);
  EXPECT_EQ(serialize_safetensors(one), expected);

  // No tensors: "{}" padded to 8; with metadata, 35 bytes padded to 40 ('(').
  EXPECT_EQ(serialize_safetensors({}), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  EXPECT_EQ(serialize_safetensors({}, {{"framework", "pt"}}),
            std::string("(\0\0\0\0\0\0\0", 8) + "{\"__metadata__\":{\"framework\":\"pt\"}}     ");
  save_safetensors(p("none.safetensors"), {});
  EXPECT_EQ(SafetensorsFile::open(p("none.safetensors")).size(), 0u);
}

TEST_F(SafetensorsTest, MixedDtypesOrderedByAlignmentThenName) {
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"a", Tensor::from_vector({1}, {1}, DType::BF16)},
      {"b", Tensor::from_vector({1}, {2}, DType::F32)},
      {"c", Tensor::from_vector({1}, {3}, DType::I32)},
      {"d", Tensor::from_vector({1}, {4}, DType::F64)},
      {"e", Tensor::from_vector({1}, {5}, DType::F64)},
  };
  save_safetensors(p("mix.safetensors"), ts);
  SafetensorsFile f = SafetensorsFile::open(p("mix.safetensors"));
  // Data order: F64 (d, e), F32 (b), I32 (c), BF16 (a).
  EXPECT_EQ(f.info("d").begin, 0u);
  EXPECT_EQ(f.info("e").begin, 8u);
  EXPECT_EQ(f.info("b").begin, 16u);
  EXPECT_EQ(f.info("c").begin, 20u);
  EXPECT_EQ(f.info("a").begin, 24u);
  for (const auto& [name, t] : ts) EXPECT_TRUE(same_bytes(f.load(name), t)) << name;
}

TEST_F(SafetensorsTest, LoadConvertsDtypes) {
  // F16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), -0, +inf.
  std::string f16("\x00\x3c" "\x00\xc0" "\xff\x7b" "\x01\x00" "\x00\x80" "\x00\x7c", 12);
  std::string i64(24, '\0');
  int64_t iv[3] = {-5, 2147483647, 7};
  std::memcpy(i64.data(), iv, 24);
  std::string big(8, '\0');
  int64_t bv = 3000000000LL;
  std::memcpy(big.data(), &bv, 8);
  std::string f32(8, '\0');
  float fv[2] = {1.0f + 1.0f / 256, -3.5f};
  std::memcpy(f32.data(), fv, 8);
  std::string u8("\x00\xff", 2);
  std::string file = craft(
      "{\"h\":{\"dtype\":\"F16\",\"shape\":[6],\"data_offsets\":[0,12]},"
      "\"i\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[12,36]},"
      "\"big\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[36,44]},"
      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[44,52]},"
      "\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[52,54]},"
      "\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[54,56]}}",
      f16 + i64 + big + f32 + u8 + std::string("\x38\x40", 2));
  write_file_atomic(p("conv.safetensors"), file);
  SafetensorsFile f = SafetensorsFile::open(p("conv.safetensors"));

  Tensor h = f.load("h");
  EXPECT_EQ(h.dtype(), DType::F32);
  std::vector<double> hv = h.to_vector();
  EXPECT_EQ(hv[0], 1);
  EXPECT_EQ(hv[1], -2);
  EXPECT_EQ(hv[2], 65504);
  EXPECT_EQ(hv[3], std::ldexp(1.0, -24));
  EXPECT_TRUE(hv[4] == 0 && std::signbit(hv[4]));
  EXPECT_TRUE(std::isinf(hv[5]) && hv[5] > 0);
  EXPECT_EQ(f.load_as("h", DType::F64).to_vector()[2], 65504);

  Tensor i = f.load("i");
  EXPECT_EQ(i.dtype(), DType::I32);
  EXPECT_EQ(i.to_vector(), (std::vector<double>{-5, 2147483647, 7}));
  EXPECT_ERROR_HAS(f.load("big"), "has value 3000000000 at index 0, outside the I32 range");
  EXPECT_EQ(f.load("u").to_vector(), (std::vector<double>{0, 255}));

  Tensor bf = f.load_as("f", DType::BF16);
  EXPECT_EQ(bf.dtype(), DType::BF16);
  EXPECT_EQ(bf.to_vector(), (std::vector<double>{1, -3.5}));  // 1+2^-8 rounds to even: 1
  EXPECT_EQ(f.load_as("f", DType::F64).to_vector(), (std::vector<double>{1.0 + 1.0 / 256, -3.5}));
  Tensor back = Tensor::from_vector({2}, {0.75, -8}, DType::BF16);
  save_safetensors(p("bf.safetensors"), {{"x", back}});
  EXPECT_EQ(SafetensorsFile::open(p("bf.safetensors")).load_as("x", DType::F32).to_vector(),
            (std::vector<double>{0.75, -8}));

  EXPECT_ERROR_HAS(f.load_as("f", DType::I32), "cannot load tensor 'f' stored as F32 as i32");
  EXPECT_ERROR_HAS(f.load_as("i", DType::F32), "cannot load tensor 'i' stored as I64 as f32");
  EXPECT_ERROR_HAS(f.load("q"), "tensor 'q' has dtype F8_E4M3 which oft cannot load");
}

TEST_F(SafetensorsTest, SaveRejectsBadInput) {
  Tensor t = Tensor::from_vector({1}, {1});
  std::string path = p("bad.safetensors");
  EXPECT_ERROR_HAS(save_safetensors(path, {{"w", t}, {"v", t}, {"w", t}}),
                   "duplicate tensor name 'w'");
  EXPECT_ERROR_HAS(save_safetensors(path, {{"__metadata__", t}}), "'__metadata__' is reserved");
  EXPECT_ERROR_HAS(save_safetensors(path, {{"u", Tensor()}}), "tensor 'u' is undefined");
  EXPECT_ERROR_HAS(save_safetensors(path, {{std::string("bad\xff", 4), t}}), "not valid UTF-8");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir_));  // no tmp left behind either

  std::string nodir = p("missing_dir/model.safetensors");
  EXPECT_ERROR_HAS(save_safetensors(nodir, {{"w", t}}),
                   "cannot write " + nodir + ": No such file or directory");
}

TEST_F(SafetensorsTest, MalformedFilesFailWithSpecificMessages) {
  std::string path = p("bad.safetensors");
  auto open_bytes = [&](const std::string& bytes) {
    write_file_atomic(path, bytes);
    SafetensorsFile::open(path);
  };
  const std::string f32x2(8, '\0');

  EXPECT_ERROR_HAS(SafetensorsFile::open(p("missing.safetensors")),
                   "cannot open safetensors file " + p("missing.safetensors") +
                       ": No such file or directory");
  EXPECT_ERROR_HAS(SafetensorsFile::open(dir_.string()), "is a directory");
  EXPECT_ERROR_HAS(open_bytes(""), "file is only 0 bytes, shorter than the 8-byte");
  EXPECT_ERROR_HAS(open_bytes("abcde"), path + ": file is only 5 bytes");
  {
    std::string b = craft("{}", "");
    b[0] = static_cast<char>(200);  // header length 200 > 16-byte file
    EXPECT_ERROR_HAS(open_bytes(b),
                     "header length 200 is larger than the file (16 bytes): truncated or not a "
                     "safetensors file");
    EXPECT_ERROR_HAS(open_bytes(std::string("\xff\xff\xff\xff\xff\xff\xff\xff{}", 10)),
                     "truncated or not a safetensors file");
  }
  EXPECT_ERROR_HAS(open_bytes(craft("{\"w\": {\"dtype\": \"F32\"", "")), "header is not valid JSON");
  EXPECT_ERROR_HAS(open_bytes(craft("[1, 2]", "")), "header is not a JSON object");
  EXPECT_ERROR_HAS(open_bytes(craft("{\"w\": 3}", "")), "entry for tensor 'w' is not an object");
  EXPECT_ERROR_HAS(open_bytes(craft("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", f32x2)),
                   "tensor 'w' has no \"dtype\" entry");
  EXPECT_ERROR_HAS(open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", f32x2)),
                   "tensor 'w' has no \"shape\" entry");
  EXPECT_ERROR_HAS(open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", f32x2)),
                   "tensor 'w' has no \"data_offsets\" entry");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", f32x2)),
      "tensor 'w' has unknown dtype \"F17\"");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", f32x2)),
      "not a non-negative integer");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", f32x2)),
      "expected [begin, end]");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", f32x2)),
      "begin > end");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", f32x2)),
      "tensor 'w' has data_offsets [0, 4) holding 4 bytes but F32 shape [2] needs 8 bytes");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                       "\"data_offsets\":[0,8]}}", f32x2)),
      "overflows");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"__metadata__\":{\"step\":3}}", "")),
      "\"__metadata__\" entry 'step' is not a string");
  EXPECT_ERROR_HAS(
      open_bytes(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       std::string(12, '\0'))),
      "tensors 'a' [0, 8) and 'b' [4, 12) overlap");

  // A valid file cut short: the last tensor's bytes are missing.
  save_safetensors(path, {{"a", Tensor::from_vector({2}, {1, 2})},
                          {"b", Tensor::from_vector({3}, {1, 2, 3})}});
  std::string whole = read_file(path);
  EXPECT_ERROR_HAS(open_bytes(whole.substr(0, whole.size() - 4)),
                   "truncated: tensor b needs bytes [8, 20) but the file holds only 16");
}

TEST_F(SafetensorsTest, MissingNameListsAvailable) {
  std::vector<std::pair<std::string, Tensor>> ts;
  for (int i = 0; i < 12; ++i)
    ts.emplace_back(cat("t", i < 10 ? "0" : "", i), Tensor::from_vector({1}, {double(i)}));
  save_safetensors(p("many.safetensors"), ts);
  SafetensorsFile f = SafetensorsFile::open(p("many.safetensors"));
  std::string msg = error_of([&] { f.load("nope"); });
  EXPECT_NE(msg.find(p("many.safetensors") + ": no tensor named 'nope'; the file has 12 tensors: "
                     "t00, t01, t02, t03, t04, t05, t06, t07, t08, t09, ... (2 more)"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("t11"), std::string::npos) << msg;
  EXPECT_ERROR_HAS(f.info("nope"), "no tensor named 'nope'");
  EXPECT_ERROR_HAS(f.load_as("nope", DType::F32), "no tensor named 'nope'");
}
