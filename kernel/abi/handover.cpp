#include "handover.hpp"

#include <linux/vfio_keepalive.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "keepalive/crc32c.hpp"
#include "keepalive_handover.h"

namespace keepalive::handover {
namespace {

template <std::size_t N>
void put_compat(char (&dst)[N], std::string_view s) {
  std::memset(dst, 0, N);
  std::memcpy(dst, s.data(), std::min(s.size(), N - 1));
}
template <std::size_t N>
bool compat_is(const char (&src)[N], std::string_view s) {
  if (s.size() >= N || std::memcmp(src, s.data(), s.size()) != 0) return false;
  for (std::size_t i = s.size(); i < N; ++i)
    if (src[i] != 0) return false;
  return true;
}
template <std::size_t N>
std::string compat_text(const char (&src)[N]) {
  std::string out;
  for (std::size_t i = 0; i < N && src[i]; ++i) out.push_back(std::isprint(static_cast<unsigned char>(src[i])) ? src[i] : '?');
  return out;
}

class writer {
 public:
  template <typename T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  std::vector<std::byte> out;
};

class reader {
 public:
  explicit reader(std::span<const std::byte> b) : b_{b} {}
  template <typename T>
  bool get(T& v) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  [[nodiscard]] std::size_t remaining() const { return b_.size() - pos_; }

 private:
  std::span<const std::byte> b_;
  std::size_t pos_ = 0;
};

error bad(std::string why) { return error{errc::protocol, "handover image: " + std::move(why)}; }

}  // namespace

std::uint32_t crc32c(std::span<const std::byte> data) noexcept { return keepalive::crc32c(data); }

std::vector<std::byte> encode(const image& img) {
  writer w;
  keepalive_handover_hdr_ser hdr{};
  hdr.magic = KEEPALIVE_HANDOVER_MAGIC;
  put_compat(hdr.compatible, KEEPALIVE_HANDOVER_COMPAT);
  hdr.nr_devices = static_cast<__u32>(img.devices.size());
  hdr.generation = img.generation;
  hdr.event_seq = img.event_seq;
  hdr.nr_ranges = static_cast<__u32>(img.ranges.size());
  w.put(hdr);

  keepalive_iommu_ser io{};
  put_compat(io.compatible, KEEPALIVE_VTD_COMPAT);
  io.root_table = img.iommu.root_table.value();
  io.irta = img.iommu.irta;
  io.pid_area = img.iommu.pid_area.value();
  io.nr_pids = img.iommu.nr_pids;
  w.put(io);

  for (const auto& r : img.ranges) w.put(keepalive_range_ser{r.start.value(), r.bytes});

  for (const auto& d : img.devices) {
    keepalive_device_ser ds{};
    put_compat(ds.compatible, KEEPALIVE_VFIO_PCI_COMPAT);
    ds.bdf = d.device.packed();
    ds.state = d.state;
    std::memcpy(ds.token, d.owner.raw().data(), sizeof ds.token);
    ds.domain_id = d.did.value();
    ds.levels = d.levels;
    ds.irq_mode = d.irq_mode;
    ds.nr_vectors = static_cast<__u32>(d.vectors.size());
    ds.sl_root = d.sl_root.value();
    for (std::size_t i = 0; i < 6; ++i) {
      ds.bar[i] = d.bar[i];
      ds.bar_size[i] = d.bar_size[i];
    }
    ds.command = d.command;
    ds.msix_ctrl = d.msix_ctrl;
    w.put(ds);
    for (const auto& v : d.vectors) {
      keepalive_vector_ser vs{};
      vs.msix_index = v.msix.value();
      vs.irte_index = v.irte.value();
      vs.posted = v.posted ? 1 : 0;
      vs.guest_vector = v.guest_vector.value();
      vs.pid = v.pid.value();
      w.put(vs);
    }
  }
  auto& out = w.out;
  const std::uint64_t total = out.size();
  std::memcpy(out.data() + offsetof(keepalive_handover_hdr_ser, total_bytes), &total, sizeof total);
  const std::uint32_t sum = crc32c(out);
  std::memcpy(out.data() + offsetof(keepalive_handover_hdr_ser, checksum), &sum, sizeof sum);
  return std::move(out);
}

result<image> decode(std::span<const std::byte> bytes) {
  reader r{bytes};
  keepalive_handover_hdr_ser hdr{};
  if (!r.get(hdr)) return bad(fmt::format("truncated header ({} bytes)", bytes.size()));
  if (hdr.magic != KEEPALIVE_HANDOVER_MAGIC) return bad(fmt::format("bad magic {:#x}", +hdr.magic));
  if (!compat_is(hdr.compatible, KEEPALIVE_HANDOVER_COMPAT))
    return bad(fmt::format("unknown compatible \"{}\"", compat_text(hdr.compatible)));
  if (hdr.total_bytes != bytes.size())
    return bad(fmt::format("truncated or padded: header says {} bytes, {} present", +hdr.total_bytes, bytes.size()));
  {
    std::vector<std::byte> copy(bytes.begin(), bytes.end());
    std::memset(copy.data() + offsetof(keepalive_handover_hdr_ser, checksum), 0, sizeof hdr.checksum);
    if (const auto sum = crc32c(copy); sum != hdr.checksum)
      return bad(fmt::format("checksum {:#010x}, expected {:#010x}", sum, +hdr.checksum));
  }
  if (hdr.__reserved != 0) return bad("header reserved field not zero");
  if (hdr.nr_devices > KEEPALIVE_HANDOVER_MAX_DEVICES) return bad(fmt::format("{} devices", +hdr.nr_devices));
  if (hdr.nr_ranges > KEEPALIVE_HANDOVER_MAX_RANGES) return bad(fmt::format("{} ranges", +hdr.nr_ranges));

  image img;
  img.generation = hdr.generation;
  img.event_seq = hdr.event_seq;

  keepalive_iommu_ser io{};
  if (!r.get(io)) return bad("truncated iommu section");
  if (!compat_is(io.compatible, KEEPALIVE_VTD_COMPAT))
    return bad(fmt::format("unknown iommu compatible \"{}\"", compat_text(io.compatible)));
  if (io.__reserved != 0) return bad("iommu reserved field not zero");
  if ((io.root_table & 0xfff) != 0) return bad("root table not page aligned");
  if ((io.pid_area & 63) != 0) return bad("descriptor area not 64-byte aligned");
  img.iommu = {hpa{io.root_table}, io.irta, hpa{io.pid_area}, io.nr_pids};

  if (r.remaining() / sizeof(keepalive_range_ser) < hdr.nr_ranges) return bad("truncated ranges");
  img.ranges.reserve(hdr.nr_ranges);
  for (std::uint32_t i = 0; i < hdr.nr_ranges; ++i) {
    keepalive_range_ser rs{};
    (void)r.get(rs);
    if ((rs.start & 0xfff) != 0 || (rs.bytes & 0xfff) != 0 || rs.bytes == 0 || rs.start + rs.bytes < rs.start)
      return bad(fmt::format("range {} [{:#x}, +{:#x}) not page aligned or empty", i, +rs.start, +rs.bytes));
    img.ranges.push_back({hpa{rs.start}, rs.bytes});
  }
  {
    auto sorted = img.ranges;
    std::sort(sorted.begin(), sorted.end(), [](const range& a, const range& b) { return a.start < b.start; });
    for (std::size_t i = 1; i < sorted.size(); ++i)
      if (sorted[i - 1].start.value() + sorted[i - 1].bytes > sorted[i].start.value())
        return bad(fmt::format("ranges overlap at {:#x}", sorted[i].start.value()));
  }

  std::set<std::uint32_t> seen;
  img.devices.reserve(hdr.nr_devices);
  for (std::uint32_t i = 0; i < hdr.nr_devices; ++i) {
    keepalive_device_ser ds{};
    if (!r.get(ds)) return bad(fmt::format("truncated device {}", i));
    const auto who = bdf::from_packed(ds.bdf).to_string();
    if (!compat_is(ds.compatible, KEEPALIVE_VFIO_PCI_COMPAT))
      return bad(fmt::format("device {}: unknown compatible \"{}\"", who, compat_text(ds.compatible)));
    if (!seen.insert(ds.bdf).second) return bad(fmt::format("device {} listed twice", who));
    if (ds.__reserved != 0) return bad(fmt::format("device {}: reserved field not zero", who));
    if (ds.state != VFIO_KEEPALIVE_STATE_FROZEN) return bad(fmt::format("device {}: state {} is not FROZEN", who, +ds.state));
    if (ds.levels < 3 || ds.levels > 5) return bad(fmt::format("device {}: {} paging levels", who, +ds.levels));
    if (ds.irq_mode > VFIO_KEEPALIVE_IRQ_MASKED) return bad(fmt::format("device {}: irq mode {}", who, +ds.irq_mode));
    if ((ds.sl_root & 0xfff) != 0 || ds.sl_root == 0) return bad(fmt::format("device {}: bad page-table root", who));
    if (ds.nr_vectors > KEEPALIVE_HANDOVER_MAX_VECTORS) return bad(fmt::format("device {}: {} vectors", who, +ds.nr_vectors));
    device_rec d;
    d.device = bdf::from_packed(ds.bdf);
    d.state = ds.state;
    token::bytes tb{};
    std::memcpy(tb.data(), ds.token, tb.size());
    d.owner = token{tb};
    if (d.owner.is_nil()) return bad(fmt::format("device {}: nil token", who));
    d.did = domain_id{ds.domain_id};
    d.levels = ds.levels;
    d.irq_mode = ds.irq_mode;
    d.sl_root = hpa{ds.sl_root};
    for (std::size_t k = 0; k < 6; ++k) {
      d.bar[k] = ds.bar[k];
      d.bar_size[k] = ds.bar_size[k];
    }
    d.command = ds.command;
    d.msix_ctrl = ds.msix_ctrl;
    if (r.remaining() / sizeof(keepalive_vector_ser) < ds.nr_vectors) return bad(fmt::format("device {}: truncated vectors", who));
    const unsigned table_size = (ds.msix_ctrl & 0x7ffu) + 1u;
    std::set<std::uint16_t> msix_seen;
    d.vectors.reserve(ds.nr_vectors);
    for (std::uint32_t k = 0; k < ds.nr_vectors; ++k) {
      keepalive_vector_ser vs{};
      (void)r.get(vs);
      if (vs.__reserved != 0 || vs.posted > 1) return bad(fmt::format("device {} vector {}: malformed", who, k));
      if (vs.msix_index >= table_size || !msix_seen.insert(vs.msix_index).second)
        return bad(fmt::format("device {} vector {}: MSI-X index {} invalid or repeated", who, k, +vs.msix_index));
      if (vs.posted && (vs.pid == 0 || (vs.pid & 63) != 0))
        return bad(fmt::format("device {} vector {}: bad descriptor address {:#x}", who, k, +vs.pid));
      d.vectors.push_back({msix_index{vs.msix_index}, irte_index{vs.irte_index}, vs.posted == 1,
                           vector{vs.guest_vector}, hpa{vs.pid}});
    }
    img.devices.push_back(std::move(d));
  }
  if (r.remaining() != 0) return bad(fmt::format("{} trailing bytes", r.remaining()));
  return img;
}

std::vector<bdf> salvage_device_list(std::span<const std::byte> bytes) {
  std::vector<bdf> out;
  reader r{bytes};
  keepalive_handover_hdr_ser hdr{};
  keepalive_iommu_ser io{};
  if (!r.get(hdr) || !r.get(io)) return out;
  if (hdr.nr_ranges > KEEPALIVE_HANDOVER_MAX_RANGES || hdr.nr_devices > KEEPALIVE_HANDOVER_MAX_DEVICES) return out;
  for (std::uint32_t i = 0; i < hdr.nr_ranges; ++i) {
    keepalive_range_ser rs{};
    if (!r.get(rs)) return out;
  }
  for (std::uint32_t i = 0; i < hdr.nr_devices; ++i) {
    keepalive_device_ser ds{};
    if (!r.get(ds)) return out;
    out.push_back(bdf::from_packed(ds.bdf));
    if (ds.nr_vectors > KEEPALIVE_HANDOVER_MAX_VECTORS) return out;
    for (std::uint32_t k = 0; k < ds.nr_vectors; ++k) {
      keepalive_vector_ser vs{};
      if (!r.get(vs)) return out;
    }
  }
  return out;
}

}  // namespace keepalive::handover
