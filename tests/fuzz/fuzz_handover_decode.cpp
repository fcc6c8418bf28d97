// The stage-2 handover decoder on arbitrary bytes: never a crash or an
// out-of-bounds access; an accepted image re-encodes to exactly the input
// bytes; salvage_device_list() reads any input and, for an accepted image,
// names exactly the image's devices in order. Each input is decoded as is,
// and again with total_bytes and the checksum made right, so mutations reach
// the checks behind the CRC.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "handover.hpp"
#include "keepalive_handover.h"

namespace {
// KEEPALIVE_FUZZ_TRACE=1: the decoder's verdict on every input on stderr.
const bool trace = std::getenv("KEEPALIVE_FUZZ_TRACE") != nullptr;

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_handover_decode: %s\n", what);
  __builtin_trap();
}

void check(const std::vector<std::byte>& input) {
  using namespace keepalive;
  const std::span<const std::byte> bytes{input.data(), input.size()};

  const auto salvaged = handover::salvage_device_list(bytes);
  if (salvaged.size() > KEEPALIVE_HANDOVER_MAX_DEVICES) finding("salvage: more devices than the format allows");

  auto img = handover::decode(bytes);
  if (trace) std::fprintf(stderr, "%zu bytes: %s\n", input.size(), img ? "accepted" : img.err().message().c_str());
  if (!img) {
    if (img.code() != errc::protocol) finding("decode refused with an errc other than EPROTO");
    return;
  }
  if (handover::encode(*img) != input) finding("accepted image does not re-encode to the same bytes");
  if (salvaged.size() != img->devices.size()) finding("salvage and decode disagree on the device count");
  for (std::size_t i = 0; i < salvaged.size(); ++i)
    if (salvaged[i] != img->devices[i].device) finding("salvage and decode disagree on a device");
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Exact-size heap copies: ASan sees a read one byte past the image.
  std::vector<std::byte> input(reinterpret_cast<const std::byte*>(data), reinterpret_cast<const std::byte*>(data) + size);
  check(input);
  if (size < sizeof(keepalive_handover_hdr_ser)) return 0;
  const std::uint64_t total = size;
  std::memcpy(input.data() + offsetof(keepalive_handover_hdr_ser, total_bytes), &total, sizeof total);
  std::memset(input.data() + offsetof(keepalive_handover_hdr_ser, checksum), 0, sizeof(std::uint32_t));
  const std::uint32_t sum = keepalive::handover::crc32c(input);
  std::memcpy(input.data() + offsetof(keepalive_handover_hdr_ser, checksum), &sum, sizeof sum);
  check(input);
  return 0;
}
