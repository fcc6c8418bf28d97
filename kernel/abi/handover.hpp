// Encoder/decoder of the stage-2 handover image (keepalive_handover.h). The
// decoder trusts nothing: any inconsistency is errc::protocol with the reason,
// and nothing of a refused image is ever applied.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "keepalive/error.hpp"
#include "keepalive/types.hpp"

namespace keepalive::handover {

struct vector_rec {
  msix_index msix;
  irte_index irte;
  bool posted = false;
  vector guest_vector;
  hpa pid;  // descriptor address when posted, else 0
  friend bool operator==(const vector_rec&, const vector_rec&) = default;
};

struct device_rec {
  bdf device;
  std::uint32_t state = 0;  // enum vfio_keepalive_state
  token owner;
  domain_id did;
  std::uint8_t levels = 4;
  std::uint8_t irq_mode = 0;  // enum vfio_keepalive_irq_mode
  hpa sl_root;
  std::array<std::uint64_t, 6> bar{};
  std::array<std::uint64_t, 6> bar_size{};
  std::uint16_t command = 0;
  std::uint16_t msix_ctrl = 0;
  std::vector<vector_rec> vectors;
  friend bool operator==(const device_rec&, const device_rec&) = default;
};

struct iommu_rec {
  hpa root_table;
  std::uint64_t irta = 0;
  hpa pid_area;
  std::uint32_t nr_pids = 0;
  friend bool operator==(const iommu_rec&, const iommu_rec&) = default;
};

struct range {
  hpa start;
  std::uint64_t bytes = 0;
  friend bool operator==(const range&, const range&) = default;
};

struct image {
  std::uint64_t generation = 0;
  std::uint64_t event_seq = 0;
  iommu_rec iommu;
  std::vector<range> ranges;
  std::vector<device_rec> devices;
  friend bool operator==(const image&, const image&) = default;
};

[[nodiscard]] std::uint32_t crc32c(std::span<const std::byte> data) noexcept;
[[nodiscard]] std::vector<std::byte> encode(const image& img);
[[nodiscard]] result<image> decode(std::span<const std::byte> bytes);
// Device BDFs named by an image that may be refused: read without trusting the
// checksum, so the new kernel can reset exactly those devices safely.
[[nodiscard]] std::vector<bdf> salvage_device_list(std::span<const std::byte> bytes);

}  // namespace keepalive::handover
