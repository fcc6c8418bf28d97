#include <array>
#include "keepalive/snapshot.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "keepalive/crc32c.hpp"

namespace keepalive {
namespace {

constexpr std::size_t checksum_offset = 4;
constexpr std::size_t total_offset = 8;
constexpr std::size_t compat_bytes = 32;
constexpr std::size_t device_bytes = 16;
constexpr std::size_t vector_bytes = 8;
constexpr std::size_t ram_bytes = 48;
constexpr std::size_t blob_bytes = 16;
constexpr std::uint64_t page = 4096;
static_assert(snapshot_compatible.size() < compat_bytes);

constexpr std::size_t pad8(std::size_t n) noexcept { return (8 - n % 8) % 8; }

class writer {
 public:
  void u8(std::uint8_t v) { out.push_back(std::byte{v}); }
  void u16(std::uint16_t v) { le(v, 2); }
  void u32(std::uint32_t v) { le(v, 4); }
  void u64(std::uint64_t v) { le(v, 8); }
  void bytes(std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }
  void zeros(std::size_t n) { out.insert(out.end(), n, std::byte{0}); }
  void align8() { zeros(pad8(out.size())); }
  void patch32(std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out[at + i] = std::byte{static_cast<std::uint8_t>(v >> (8 * i))};
  }
  void patch64(std::size_t at, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out[at + i] = std::byte{static_cast<std::uint8_t>(v >> (8 * i))};
  }
  std::vector<std::byte> out;

 private:
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(std::byte{static_cast<std::uint8_t>(v >> (8 * i))});
  }
};

class reader {
 public:
  explicit reader(std::span<const std::byte> b) : b_{b} {}
  [[nodiscard]] std::size_t remaining() const noexcept { return b_.size() - pos_; }
  [[nodiscard]] std::size_t position() const noexcept { return pos_; }
  [[nodiscard]] bool has(std::size_t n) const noexcept { return remaining() >= n; }
  // Callers check has() first.
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(take(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(take(4)); }
  std::uint64_t u64() { return take(8); }
  std::span<const std::byte> bytes(std::size_t n) {
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  // Padding to the next 8-byte boundary: present and zero.
  bool zero_pad() {
    const std::size_t n = pad8(pos_);
    if (!has(n)) return false;
    for (auto b : bytes(n))
      if (b != std::byte{0}) return false;
    return true;
  }

 private:
  std::uint64_t take(int n) {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(b_[pos_ + i])} << (8 * i);
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  std::span<const std::byte> b_;
  std::size_t pos_ = 0;
};

error bad(std::string why) { return error{errc::protocol, "snapshot: " + std::move(why)}; }

bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

std::string printable_prefix(std::span<const std::byte> b) {
  std::string out;
  for (auto c : b) {
    if (c == std::byte{0}) break;
    const auto ch = static_cast<char>(c);
    out.push_back(ch >= 0x20 && ch < 0x7f ? ch : '?');
  }
  return out;
}

struct span64 {
  std::uint64_t start, bytes;
};
// First overlapping pair's start, if any (ranges already checked not to wrap).
std::optional<std::uint64_t> overlap(std::vector<span64> v) {
  std::sort(v.begin(), v.end(), [](const span64& a, const span64& b) { return a.start < b.start; });
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v[i - 1].start + v[i - 1].bytes > v[i].start) return v[i].start;
  return std::nullopt;
}

}  // namespace

bool known_vcpu_state_tag(std::uint32_t tag) noexcept {
  return (tag >= static_cast<std::uint32_t>(vcpu_state_tag::regs) && tag <= static_cast<std::uint32_t>(vcpu_state_tag::cpuid)) ||
         tag >= static_cast<std::uint32_t>(vcpu_state_tag::vmm_private);
}

std::string vcpu_state_tag_name(vcpu_state_tag tag) {
  switch (tag) {
    case vcpu_state_tag::regs: return "regs";
    case vcpu_state_tag::sregs: return "sregs";
    case vcpu_state_tag::fpu: return "fpu";
    case vcpu_state_tag::lapic: return "lapic";
    case vcpu_state_tag::msrs: return "msrs";
    case vcpu_state_tag::events: return "events";
    case vcpu_state_tag::xcrs: return "xcrs";
    case vcpu_state_tag::xsave: return "xsave";
    case vcpu_state_tag::debugregs: return "debugregs";
    case vcpu_state_tag::mp_state: return "mp_state";
    case vcpu_state_tag::cpuid: return "cpuid";
    case vcpu_state_tag::vmm_private: break;
  }
  const auto v = static_cast<std::uint32_t>(tag);
  if (v >= static_cast<std::uint32_t>(vcpu_state_tag::vmm_private)) return fmt::format("vmm+{:#x}", v - 0x10000u);
  return fmt::format("tag {}", v);
}

const vcpu_blob* snapshot::find(std::uint32_t vcpu, vcpu_state_tag tag) const noexcept {
  for (const auto& b : vcpu_state)
    if (b.vcpu == vcpu && b.tag == tag) return &b;
  return nullptr;
}

namespace {

// The smallest value given twice, if any (sorts `v`).
template <typename T>
const T* repeated(std::vector<T>& v) {
  std::sort(v.begin(), v.end());
  auto it = std::adjacent_find(v.begin(), v.end());
  return it == v.end() ? nullptr : &*it;
}

}  // namespace

// Plain loops and sorted vectors, no allocation per element and no string
// unless refused: a VMM validates in its restart pause (freeze, encode, decode,
// reclaim).
std::optional<std::string> validate(const snapshot& s) {
  if (s.owner.is_nil()) return "nil token";
  if (s.nr_vcpus == 0 || s.nr_vcpus > snapshot_max_vcpus) return fmt::format("{} vCPUs", s.nr_vcpus);
  if (s.devices.size() > snapshot_max_devices) return fmt::format("{} devices", s.devices.size());
  if (s.ram.size() > snapshot_max_ram) return fmt::format("{} RAM regions", s.ram.size());
  std::vector<std::uint32_t> bdfs;
  bdfs.reserve(s.devices.size());
  std::vector<std::uint16_t> msix;
  for (const auto& d : s.devices) {
    bdfs.push_back(d.address.packed());
    if (static_cast<std::uint32_t>(d.mode) > static_cast<std::uint32_t>(abi::irq_mode::masked))
      return fmt::format("device {}: irq mode {}", d.address.to_string(), static_cast<std::uint32_t>(d.mode));
    if (d.vectors.size() > snapshot_max_vectors)
      return fmt::format("device {}: {} vectors", d.address.to_string(), d.vectors.size());
    msix.clear();
    for (const auto& v : d.vectors) {
      if (v.msix.value() >= snapshot_max_vectors)
        return fmt::format("device {}: MSI-X index {} out of range or repeated", d.address.to_string(), v.msix.value());
      if (v.guest_vector.value() < 0x10)
        return fmt::format("device {} MSI-X {}: guest vector {:#x} is an exception vector", d.address.to_string(),
                           v.msix.value(), v.guest_vector.value());
      if (v.vcpu >= s.nr_vcpus)
        return fmt::format("device {} MSI-X {}: vCPU {} of {}", d.address.to_string(), v.msix.value(), v.vcpu,
                           s.nr_vcpus);
      msix.push_back(v.msix.value());
    }
    if (const auto* twice = repeated(msix))
      return fmt::format("device {}: MSI-X index {} out of range or repeated", d.address.to_string(), *twice);
  }
  if (const auto* twice = repeated(bdfs)) return fmt::format("device {} listed twice", bdf::from_packed(*twice).to_string());
  std::vector<span64> by_gpa, by_iova;
  by_gpa.reserve(s.ram.size());
  by_iova.reserve(s.ram.size());
  for (std::size_t i = 0; i < s.ram.size(); ++i) {
    const auto& r = s.ram[i];
    if (r.bytes == 0 || ((r.guest.value() | r.io.value() | r.bytes | r.vaddr | r.backing_offset) % page) != 0)
      return fmt::format("RAM region {} empty or not 4 KiB aligned", i);
    if (r.guest.value() + r.bytes < r.guest.value() || r.io.value() + r.bytes < r.io.value() ||
        r.vaddr + r.bytes < r.vaddr || r.backing_offset + r.bytes < r.backing_offset)
      return fmt::format("RAM region {} wraps", i);
    if (r.backing.size() > snapshot_max_backing_name || !printable(r.backing))
      return fmt::format("RAM region {}: backing name not printable or too long", i);
    by_gpa.push_back({r.guest.value(), r.bytes});
    by_iova.push_back({r.io.value(), r.bytes});
  }
  if (auto at = overlap(std::move(by_gpa))) return fmt::format("RAM regions overlap at GPA {:#x}", *at);
  if (auto at = overlap(std::move(by_iova))) return fmt::format("RAM regions overlap at IOVA {:#x}", *at);
  if (s.vcpu_state.size() > std::size_t{snapshot_max_vcpus} * 64) return fmt::format("{} vCPU blobs", s.vcpu_state.size());
  std::vector<std::pair<std::uint32_t, std::uint32_t>> blobs;
  blobs.reserve(s.vcpu_state.size());
  for (const auto& b : s.vcpu_state) {
    const auto tag = static_cast<std::uint32_t>(b.tag);
    if (!known_vcpu_state_tag(tag)) return fmt::format("vCPU {}: unknown state tag {}", b.vcpu, tag);
    if (b.vcpu >= s.nr_vcpus) return fmt::format("vCPU state for vCPU {} of {}", b.vcpu, s.nr_vcpus);
    blobs.emplace_back(b.vcpu, tag);
  }
  if (const auto* twice = repeated(blobs))
    return fmt::format("vCPU {}: {} given twice", twice->first, vcpu_state_tag_name(static_cast<vcpu_state_tag>(twice->second)));
  return std::nullopt;
}

result<std::vector<std::byte>> encode_snapshot(const snapshot& s) {
  if (auto why = validate(s)) return {errc::invalid, "snapshot: " + *why};
  writer w;
  {
    std::size_t total = snapshot_header_bytes + s.extra.size() + 8;
    for (const auto& d : s.devices) total += device_bytes + d.vectors.size() * vector_bytes;
    for (const auto& r : s.ram) total += ram_bytes + r.backing.size() + 8;
    for (const auto& b : s.vcpu_state) total += blob_bytes + b.bytes.size() + 8;
    w.out.reserve(total);
  }
  w.u32(snapshot_magic);
  w.u32(0);  // checksum
  w.u64(0);  // total bytes
  w.bytes(std::as_bytes(std::span{snapshot_compatible}));
  w.zeros(compat_bytes - snapshot_compatible.size());
  w.bytes(std::as_bytes(std::span{s.owner.raw()}));
  w.u32(s.nr_vcpus);
  w.u32(static_cast<std::uint32_t>(s.devices.size()));
  w.u32(static_cast<std::uint32_t>(s.ram.size()));
  w.u32(static_cast<std::uint32_t>(s.vcpu_state.size()));
  w.u64(s.extra.size());
  w.u64(0);
  for (const auto& d : s.devices) {
    w.u32(d.address.packed());
    w.u32(d.group);
    w.u16(static_cast<std::uint16_t>(d.vectors.size()));
    w.u8(static_cast<std::uint8_t>(d.mode));
    w.u8(0);
    w.u32(0);
    for (const auto& v : d.vectors) {
      w.u16(v.msix.value());
      w.u8(v.guest_vector.value());
      w.u8(0);
      w.u32(v.vcpu);
    }
  }
  for (const auto& r : s.ram) {
    w.u64(r.guest.value());
    w.u64(r.io.value());
    w.u64(r.bytes);
    w.u64(r.vaddr);
    w.u64(r.backing_offset);
    w.u32(static_cast<std::uint32_t>(r.backing.size()));
    w.u32(0);
    w.bytes(std::as_bytes(std::span{r.backing}));
    w.align8();
  }
  for (const auto& b : s.vcpu_state) {
    w.u32(b.vcpu);
    w.u32(static_cast<std::uint32_t>(b.tag));
    w.u64(b.bytes.size());
    w.bytes(b.bytes);
    w.align8();
  }
  w.bytes(s.extra);
  w.align8();
  w.patch64(total_offset, w.out.size());
  w.patch32(checksum_offset, crc32c(w.out));
  return std::move(w.out);
}

result<snapshot> decode_snapshot(std::span<const std::byte> bytes) {
  reader r{bytes};
  if (!r.has(snapshot_header_bytes)) return bad(fmt::format("truncated header ({} bytes)", bytes.size()));
  if (const auto magic = r.u32(); magic != snapshot_magic) return bad(fmt::format("bad magic {:#010x}", magic));
  const std::uint32_t sum = r.u32();
  const std::uint64_t total = r.u64();
  const auto compat = r.bytes(compat_bytes);
  {
    bool ok = std::memcmp(compat.data(), snapshot_compatible.data(), snapshot_compatible.size()) == 0;
    for (std::size_t i = snapshot_compatible.size(); ok && i < compat_bytes; ++i) ok = compat[i] == std::byte{0};
    if (!ok) return bad(fmt::format("unknown version \"{}\" (this is {})", printable_prefix(compat), snapshot_compatible));
  }
  if (total != bytes.size())
    return bad(fmt::format("truncated or padded: header says {} bytes, {} present", total, bytes.size()));
  {
    const std::array<std::byte, 4> zero{};
    std::uint32_t c = crc32c(bytes.first(checksum_offset));
    c = crc32c_extend(c, zero);
    c = crc32c_extend(c, bytes.subspan(checksum_offset + 4));
    if (c != sum) return bad(fmt::format("checksum {:#010x}, header says {:#010x}", c, sum));
  }
  snapshot s;
  {
    token::bytes tb{};
    const auto t = r.bytes(tb.size());
    std::memcpy(tb.data(), t.data(), tb.size());
    s.owner = token{tb};
  }
  s.nr_vcpus = r.u32();
  const std::uint32_t nr_devices = r.u32(), nr_ram = r.u32(), nr_blobs = r.u32();
  const std::uint64_t extra_bytes = r.u64();
  if (r.u64() != 0) return bad("header reserved field not zero");
  if (s.nr_vcpus > snapshot_max_vcpus) return bad(fmt::format("{} vCPUs", s.nr_vcpus));
  if (nr_devices > snapshot_max_devices) return bad(fmt::format("{} devices", nr_devices));
  if (nr_ram > snapshot_max_ram) return bad(fmt::format("{} RAM regions", nr_ram));
  if (nr_blobs > std::size_t{snapshot_max_vcpus} * 64) return bad(fmt::format("{} vCPU blobs", nr_blobs));

  s.devices.reserve(nr_devices);
  for (std::uint32_t i = 0; i < nr_devices; ++i) {
    if (!r.has(device_bytes)) return bad(fmt::format("truncated device {}", i));
    snapshot_device d;
    d.address = bdf::from_packed(r.u32());
    d.group = r.u32();
    const std::uint16_t nr_vectors = r.u16();
    const std::uint8_t mode = r.u8();
    if (r.u8() != 0 || r.u32() != 0) return bad(fmt::format("device {}: reserved field not zero", i));
    if (mode > static_cast<std::uint8_t>(abi::irq_mode::masked)) return bad(fmt::format("device {}: irq mode {}", i, mode));
    d.mode = static_cast<abi::irq_mode>(mode);
    if (nr_vectors > snapshot_max_vectors) return bad(fmt::format("device {}: {} vectors", i, nr_vectors));
    if (r.remaining() / vector_bytes < nr_vectors) return bad(fmt::format("device {}: truncated vectors", i));
    d.vectors.reserve(nr_vectors);
    for (std::uint16_t k = 0; k < nr_vectors; ++k) {
      vector_route v;
      v.msix = msix_index{r.u16()};
      v.guest_vector = vector{r.u8()};
      if (r.u8() != 0) return bad(fmt::format("device {} vector {}: reserved field not zero", i, k));
      v.vcpu = r.u32();
      d.vectors.push_back(v);
    }
    s.devices.push_back(std::move(d));
  }
  s.ram.reserve(nr_ram);
  for (std::uint32_t i = 0; i < nr_ram; ++i) {
    if (!r.has(ram_bytes)) return bad(fmt::format("truncated RAM region {}", i));
    ram_region m;
    m.guest = gpa{r.u64()};
    m.io = iova{r.u64()};
    m.bytes = r.u64();
    m.vaddr = r.u64();
    m.backing_offset = r.u64();
    const std::uint32_t name_len = r.u32();
    if (r.u32() != 0) return bad(fmt::format("RAM region {}: reserved field not zero", i));
    if (name_len > snapshot_max_backing_name || !r.has(name_len))
      return bad(fmt::format("RAM region {}: backing name of {} bytes", i, name_len));
    const auto name = r.bytes(name_len);
    m.backing.assign(reinterpret_cast<const char*>(name.data()), name.size());
    if (!r.zero_pad()) return bad(fmt::format("RAM region {}: padding not zero", i));
    s.ram.push_back(std::move(m));
  }
  s.vcpu_state.reserve(nr_blobs);
  for (std::uint32_t i = 0; i < nr_blobs; ++i) {
    if (!r.has(blob_bytes)) return bad(fmt::format("truncated vCPU blob {}", i));
    vcpu_blob b;
    b.vcpu = r.u32();
    b.tag = static_cast<vcpu_state_tag>(r.u32());
    const std::uint64_t len = r.u64();
    if (!r.has(len)) return bad(fmt::format("vCPU blob {}: {} bytes, {} left", i, len, r.remaining()));
    const auto data = r.bytes(static_cast<std::size_t>(len));
    b.bytes.assign(data.begin(), data.end());
    if (!r.zero_pad()) return bad(fmt::format("vCPU blob {}: padding not zero", i));
    s.vcpu_state.push_back(std::move(b));
  }
  if (!r.has(extra_bytes)) return bad(fmt::format("extra state: {} bytes, {} left", extra_bytes, r.remaining()));
  {
    const auto data = r.bytes(static_cast<std::size_t>(extra_bytes));
    s.extra.assign(data.begin(), data.end());
  }
  if (!r.zero_pad()) return bad("extra state: padding not zero");
  if (r.remaining() != 0) return bad(fmt::format("{} trailing bytes", r.remaining()));
  if (auto why = validate(s)) return bad(*why);
  return s;
}

status write_snapshot(int fd, const snapshot& s) {
  auto bytes = encode_snapshot(s);
  if (!bytes) return bytes.err();
  std::span<const std::byte> left{*bytes};
  while (!left.empty()) {
    const ssize_t n = ::write(fd, left.data(), left.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return {errc_from_errno(errno), "write snapshot"};
    left = left.subspan(static_cast<std::size_t>(n));
  }
  return {};
}

result<snapshot> read_snapshot(int fd) {
  auto fill = [&](std::span<std::byte> out, std::size_t already) -> status {
    for (std::size_t at = 0; at < out.size();) {
      const ssize_t n = ::read(fd, out.data() + at, out.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return {errc_from_errno(errno), "read snapshot"};
      if (n == 0) return bad(fmt::format("truncated: end of file after {} bytes", already + at));
      at += static_cast<std::size_t>(n);
    }
    return {};
  };
  std::array<std::byte, snapshot_header_bytes> header{};
  if (auto st = fill(header, 0); !st) return st.err();
  std::uint64_t total = 0;
  for (int i = 0; i < 8; ++i) total |= std::uint64_t{static_cast<std::uint8_t>(header[total_offset + i])} << (8 * i);
  if (total < snapshot_header_bytes || total > snapshot_max_bytes)
    return bad(fmt::format("header says {} bytes", total));
  // Sized once: no vector growth (GCC 12 -O3 misreads a resize as out of bounds).
  std::vector<std::byte> buf(static_cast<std::size_t>(total));
  std::copy(header.begin(), header.end(), buf.begin());
  if (auto st = fill(std::span{buf}.subspan(snapshot_header_bytes), snapshot_header_bytes); !st) return st.err();
  return decode_snapshot(buf);
}

std::string describe(const snapshot& s) {
  std::string out = fmt::format("{}\ntoken {}\nvcpus {}\n", snapshot_compatible, s.owner.to_string(), s.nr_vcpus);
  static constexpr const char* modes[] = {"none", "posted", "masked"};
  for (const auto& d : s.devices) {
    const auto m = static_cast<std::uint32_t>(d.mode);
    out += fmt::format("device {} group {} irq {} vectors {}\n", d.address.to_string(), d.group, m < 3 ? modes[m] : "?",
                       d.vectors.size());
    for (const auto& v : d.vectors)
      out += fmt::format("  msix {} -> guest vector {:#04x} on vcpu {}\n", v.msix.value(), v.guest_vector.value(), v.vcpu);
  }
  for (const auto& r : s.ram)
    out += fmt::format("ram gpa {:#x} iova {:#x} size {:#x} vaddr {:#x} backing \"{}\" +{:#x}\n", r.guest.value(),
                       r.io.value(), r.bytes, r.vaddr, r.backing, r.backing_offset);
  for (const auto& b : s.vcpu_state)
    out += fmt::format("vcpu {} {} {} bytes\n", b.vcpu, vcpu_state_tag_name(b.tag), b.bytes.size());
  out += fmt::format("extra {} bytes\n", s.extra.size());
  return out;
}

}  // namespace keepalive
