#include "handover.hpp"

#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

namespace keepalive::minivmm {
namespace {

enum tag : std::uint32_t { tag_memory = 1, tag_guest = 2, tag_vcpu = 3, tag_irqchip = 4, tag_device = 5, tag_timing = 6 };
constexpr std::size_t header_bytes = 32;  // magic, version, records, payload bytes, checksum
constexpr std::uint64_t max_payload = 64ull << 20;

std::uint64_t fnv1a(std::span<const std::byte> b) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte x : b) {
    h ^= static_cast<std::uint8_t>(x);
    h *= 0x100000001b3ull;
  }
  return h;
}

class writer {
 public:
  template <typename T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    out.insert(out.end(), p, p + sizeof v);
  }
  void begin(tag t) {
    put(static_cast<std::uint32_t>(t));
    len_at_ = out.size();
    put(std::uint32_t{0});
    ++records;
  }
  void end() {
    const auto len = static_cast<std::uint32_t>(out.size() - len_at_ - 4);
    std::memcpy(out.data() + len_at_, &len, sizeof len);
  }
  std::vector<std::byte> out;
  std::uint32_t records = 0;

 private:
  std::size_t len_at_ = 0;
};

class reader {
 public:
  explicit reader(std::span<const std::byte> b) : b_{b} {}
  template <typename T>
  bool get(T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (b_.size() - pos_ < sizeof v) return false;
    std::memcpy(&v, b_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return true;
  }
  [[nodiscard]] bool done() const noexcept { return pos_ == b_.size(); }

 private:
  std::span<const std::byte> b_;
  std::size_t pos_ = 0;
};

struct vcpu_fixed {
  std::uint64_t tsc_offset;
  std::uint32_t nmsrs;
  std::uint32_t reserved;
};
struct msr_wire {
  std::uint32_t index, reserved;
  std::uint64_t value;
};
struct guest_wire {
  std::uint64_t ram_bytes, bar0_gpa;
  std::uint32_t ring_entries, buffer_bytes, payload_bytes, irq_mod_pkts, irq_mod_usec, verify;
};
static_assert(sizeof(guest_wire) == 40);
struct device_wire {
  std::uint32_t bdf, msix_index, guest_vector, guest_apic, gsi, reserved;
  token::bytes owner;
};
static_assert(sizeof(device_wire) == 40);
struct memory_wire {
  std::uint64_t ram_phys_offset;
  std::uint32_t tsc_khz, reserved;
};
static_assert(sizeof(memory_wire) == 16);

error bad(std::string what) { return {errc::protocol, "VMM state: " + std::move(what)}; }

}  // namespace

std::vector<std::byte> encode(const vmm_state& s) {
  writer w;
  w.begin(tag_memory);
  w.put(memory_wire{s.ram_phys_offset, s.tsc_khz, 0});
  w.end();
  w.begin(tag_guest);
  w.put(guest_wire{s.guest.ram_bytes, s.guest.bar0_gpa, s.guest.ring_entries, s.guest.buffer_bytes, s.guest.payload_bytes,
                   s.guest.irq_mod_pkts, s.guest.irq_mod_usec, static_cast<std::uint32_t>(s.guest.verify)});
  w.end();
  for (const auto& v : s.vcpus) {
    w.begin(tag_vcpu);
    w.put(v.regs);
    w.put(v.sregs);
    w.put(v.xsave);
    w.put(v.xcrs);
    w.put(v.lapic);
    w.put(v.events);
    w.put(v.mp_state);
    w.put(v.debugregs);
    w.put(vcpu_fixed{v.tsc_offset, static_cast<std::uint32_t>(v.msrs.size()), 0});
    for (const auto& m : v.msrs) w.put(msr_wire{m.index, 0, m.value});
    w.end();
  }
  w.begin(tag_irqchip);
  w.put(s.irqchip.chips);
  w.end();
  for (const auto& d : s.devices) {
    w.begin(tag_device);
    w.put(device_wire{d.device.packed(), d.route.msix_index, d.route.guest_vector.value(), d.route.guest_apic.value(),
                      d.route.gsi, 0, d.owner.raw()});
    w.end();
  }
  w.begin(tag_timing);
  w.put(s.pause_started_ns);
  w.end();

  std::vector<std::byte> out(header_bytes + w.out.size());
  const std::uint64_t payload = w.out.size();
  const std::uint64_t sum = fnv1a(w.out);
  std::memcpy(out.data(), &state_magic, 8);
  std::memcpy(out.data() + 8, &state_version, 4);
  std::memcpy(out.data() + 12, &w.records, 4);
  std::memcpy(out.data() + 16, &payload, 8);
  std::memcpy(out.data() + 24, &sum, 8);
  if (!w.out.empty()) std::memcpy(out.data() + header_bytes, w.out.data(), w.out.size());
  return out;
}

result<vmm_state> decode(std::span<const std::byte> bytes) {
  if (bytes.size() < header_bytes) return bad("truncated header");
  std::uint64_t magic = 0, payload = 0, sum = 0;
  std::uint32_t version = 0, records = 0;
  std::memcpy(&magic, bytes.data(), 8);
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&records, bytes.data() + 12, 4);
  std::memcpy(&payload, bytes.data() + 16, 8);
  std::memcpy(&sum, bytes.data() + 24, 8);
  if (magic != state_magic) return bad("bad magic");
  if (version != state_version) return bad(fmt::format("version {} (this VMM reads {})", version, state_version));
  if (payload != bytes.size() - header_bytes || payload > max_payload) return bad("length mismatch");
  const auto body = bytes.subspan(header_bytes);
  if (fnv1a(body) != sum) return bad("checksum mismatch");

  vmm_state s;
  unsigned seen_memory = 0, seen_guest = 0, seen_irqchip = 0, seen_timing = 0;
  std::size_t pos = 0;
  for (std::uint32_t i = 0; i < records; ++i) {
    std::uint32_t t = 0, len = 0;
    if (body.size() - pos < 8) return bad("truncated record header");
    std::memcpy(&t, body.data() + pos, 4);
    std::memcpy(&len, body.data() + pos + 4, 4);
    pos += 8;
    if (len > body.size() - pos) return bad("record overruns the image");
    reader r{body.subspan(pos, len)};
    pos += len;
    switch (t) {
      case tag_memory: {
        memory_wire m{};
        if (!r.get(m) || !r.done() || m.reserved != 0) return bad("memory record");
        s.ram_phys_offset = m.ram_phys_offset;
        s.tsc_khz = m.tsc_khz;
        ++seen_memory;
        break;
      }
      case tag_guest: {
        guest_wire g{};
        if (!r.get(g) || !r.done() || g.verify > MINIVMM_VERIFY_REFERENCE) return bad("guest record");
        s.guest.ram_bytes = g.ram_bytes;
        s.guest.bar0_gpa = g.bar0_gpa;
        s.guest.ring_entries = g.ring_entries;
        s.guest.buffer_bytes = g.buffer_bytes;
        s.guest.payload_bytes = g.payload_bytes;
        s.guest.irq_mod_pkts = g.irq_mod_pkts;
        s.guest.irq_mod_usec = g.irq_mod_usec;
        s.guest.verify = static_cast<minivmm_verify_mode>(g.verify);
        ++seen_guest;
        break;
      }
      case tag_vcpu: {
        vcpu_state v;
        vcpu_fixed f{};
        if (!r.get(v.regs) || !r.get(v.sregs) || !r.get(v.xsave) || !r.get(v.xcrs) || !r.get(v.lapic) ||
            !r.get(v.events) || !r.get(v.mp_state) || !r.get(v.debugregs) || !r.get(f) || f.reserved != 0)
          return bad("vcpu record");
        v.tsc_offset = f.tsc_offset;
        for (std::uint32_t m = 0; m < f.nmsrs; ++m) {
          msr_wire w{};
          if (!r.get(w) || w.reserved != 0) return bad("vcpu MSR list");
          v.msrs.push_back({w.index, w.value});
        }
        if (!r.done()) return bad("vcpu record length");
        s.vcpus.push_back(std::move(v));
        break;
      }
      case tag_irqchip:
        if (!r.get(s.irqchip.chips) || !r.done()) return bad("irqchip record");
        ++seen_irqchip;
        break;
      case tag_device: {
        device_wire d{};
        if (!r.get(d) || !r.done() || d.reserved != 0 || d.guest_vector > 0xff) return bad("device record");
        device_record rec;
        rec.device = bdf::from_packed(d.bdf);
        rec.route.msix_index = d.msix_index;
        rec.route.guest_vector = vector{static_cast<std::uint8_t>(d.guest_vector)};
        rec.route.guest_apic = apic_id{d.guest_apic};
        rec.route.gsi = d.gsi;
        rec.owner = token{d.owner};
        if (rec.owner.is_nil()) return bad("device record without a token");
        s.devices.push_back(rec);
        break;
      }
      case tag_timing:
        if (!r.get(s.pause_started_ns) || !r.done()) return bad("timing record");
        ++seen_timing;
        break;
      default: return bad(fmt::format("unknown record {}", t));
    }
  }
  if (pos != body.size()) return bad("trailing bytes");
  if (seen_memory != 1 || seen_guest != 1 || seen_irqchip != 1 || seen_timing != 1 || s.vcpus.empty())
    return bad("missing or repeated record");
  if (auto st = validate(s.guest); !st) return bad("guest config: " + st.err().context());
  return s;
}

status write_state(int fd, const vmm_state& s) {
  const auto bytes = encode(s);
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return {errc_from_errno(errno), "write VMM state"};
    }
    off += static_cast<std::size_t>(n);
  }
  return {};
}

result<vmm_state> read_state(int fd) {
  std::vector<std::byte> bytes;
  std::byte chunk[65536];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return error{errc_from_errno(errno), "read VMM state"};
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), chunk, chunk + n);
    if (bytes.size() > max_payload + header_bytes) return bad("too large");
  }
  return decode(bytes);
}

}  // namespace keepalive::minivmm
