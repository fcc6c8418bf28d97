// Freeze + resume of devices on the in-process sim host, against the number
// of vectors, devices and IOMMU mappings, with the alternatives measured in
// the same run: the fd hand-over way (QEMU CPR: every mapping's vaddr is
// invalidated and re-pointed, interrupts re-wired) and a full re-map.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "keepalive/abi/ops.hpp"
#include "kernel.hpp"
#include "platform.hpp"
#include "sim_uapi.h"

using namespace keepalive;
using namespace keepalive::sim;

namespace {

const token tok = *token::parse("c0ffee00-1234-4abc-8def-0123456789ab");

struct shape {
  unsigned devices = 1;
  unsigned vectors = 1;
  std::uint64_t mappings = 1;
  std::uint64_t page = 4096;  // size of each mapping
};

std::uint64_t guest_bytes(const shape& s) { return std::max<std::uint64_t>(s.mappings * s.page, 2ull << 20); }

struct host {
  explicit host(const shape& s) {
    platform_config pc;
    pc.nics = s.devices;
    pc.msix_vectors = std::max(4u, s.vectors);
    const std::uint64_t guest = (guest_bytes(s) + (1ull << 30) - 1) & ~((1ull << 30) - 1);
    pc.phys_bytes = (64ull << 20) + guest;
    plat = std::move(*platform::create(pc));
    k = std::move(*kernel::boot(*plat, kcfg));
  }
  std::unique_ptr<platform> plat;
  kernel_config kcfg;
  std::unique_ptr<kernel> k;
};

long must(long rc, const char* what, benchmark::State& st) {
  if (rc < 0) st.SkipWithError(what);
  return rc;
}

// A VMM process owning every device of the host.
struct owner {
  owner(host& h, const shape& s, int efd) : h_{h}, s_{s}, efd_{efd}, proc{h.k->spawn("vmm")} {}

  bool open(benchmark::State& st, bool reclaim) {
    auto c = proc->open("/dev/vfio/vfio", O_RDWR);
    if (!c) return st.SkipWithError("open container"), false;
    container = *c;
    bool iommu_set = false;
    for (const auto& fn : h_.plat->functions()) {
      auto g = proc->open("/dev/vfio/" + std::to_string(fn->address().source_id()), O_RDWR);
      if (!g) return st.SkipWithError("open group"), false;
      if (must(proc->ioctl(*g, VFIO_GROUP_SET_CONTAINER, &container), "SET_CONTAINER", st) < 0) return false;
      if (!iommu_set &&
          must(proc->ioctl(container, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})),
               "SET_IOMMU", st) < 0)
        return false;
      iommu_set = true;
      std::string name = reclaim ? abi::reclaim_name(fn->address(), tok) : fn->address().to_string();
      const long fd = must(proc->ioctl(*g, VFIO_GROUP_GET_DEVICE_FD, name.data()), "GET_DEVICE_FD", st);
      if (fd < 0) return false;
      devices.push_back(static_cast<int>(fd));
    }
    return true;
  }
  bool map_all(benchmark::State& st, std::uint32_t extra_flags = 0) {
    const hpa ram{h_.kcfg.map.guest_start()};
    for (std::uint64_t i = 0; i < s_.mappings; ++i) {
      vfio_iommu_type1_dma_map m{};
      m.argsz = sizeof m;
      m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | extra_flags;
      m.vaddr = ram.value() + i * s_.page;
      m.iova = i * s_.page;
      m.size = s_.page;
      if (must(proc->ioctl(container, VFIO_IOMMU_MAP_DMA, &m), "MAP_DMA", st) < 0) return false;
    }
    return true;
  }
  bool unmap_all(benchmark::State& st, std::uint32_t flags = 0) {
    for (std::uint64_t i = 0; i < s_.mappings; ++i) {
      vfio_iommu_type1_dma_unmap u{};
      u.argsz = sizeof u;
      u.flags = flags;
      u.iova = i * s_.page;
      u.size = s_.page;
      if (must(proc->ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u), "UNMAP_DMA", st) < 0) return false;
    }
    return true;
  }
  // SET_IRQS (every vector, one eventfd) + one descriptor + a bypass per vector.
  bool wire(benchmark::State& st) {
    if (vm < 0) {
      auto v = proc->open("/dev/kvm", O_RDWR);
      if (!v) return st.SkipWithError("open vm"), false;
      vm = *v;
      ka_sim_pid pid{};
      pid.size = sizeof pid;
      pid.host_apic_id = 1;
      if (must(proc->ioctl(vm, KA_SIM_CREATE_PID, &pid), "CREATE_PID", st) < 0) return false;
      pid_id = pid.out_pid_id;
    }
    std::vector<std::byte> buf(sizeof(vfio_irq_set) + s_.vectors * sizeof(std::int32_t));
    auto* set = reinterpret_cast<vfio_irq_set*>(buf.data());
    set->argsz = static_cast<std::uint32_t>(buf.size());
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = VFIO_PCI_MSIX_IRQ_INDEX;
    set->count = s_.vectors;
    for (unsigned i = 0; i < s_.vectors; ++i) std::memcpy(buf.data() + sizeof *set + i * 4, &efd_, 4);
    for (int dev : devices) {
      if (must(proc->ioctl(dev, VFIO_DEVICE_SET_IRQS, set), "SET_IRQS", st) < 0) return false;
      for (unsigned i = 0; i < s_.vectors; ++i) {
        ka_sim_irq_bypass b{};
        b.size = sizeof b;
        b.device_fd = dev;
        b.msix_index = i;
        b.pid_id = pid_id;
        b.guest_vector = 0x20 + i % 200;
        b.irqfd = efd_;
        if (must(proc->ioctl(vm, KA_SIM_IRQ_BYPASS, &b), "IRQ_BYPASS", st) < 0) return false;
      }
    }
    return true;
  }
  bool cold(benchmark::State& st) { return open(st, false) && map_all(st) && wire(st); }

  host& h_;
  shape s_;
  int efd_;
  std::shared_ptr<process> proc;
  int container = -1, vm = -1;
  std::uint32_t pid_id = 0;
  std::vector<int> devices;
};

shape shape_from(const benchmark::State& st, int what) {
  shape s;
  if (what == 0) s.mappings = static_cast<std::uint64_t>(st.range(0));
  if (what == 1) s.vectors = static_cast<unsigned>(st.range(0));
  if (what == 2) s.devices = static_cast<unsigned>(st.range(0));
  if (st.range(1) != 0) s.page = static_cast<std::uint64_t>(st.range(1));
  return s;
}

// Keepalive: enter, the owner exits, a new owner reclaims with the token,
// re-wires its vectors (same IRTEs, pending drained) and leaves keepalive.
// Guest memory is not re-mapped: the domain is adopted as it is.
void keepalive_cycle(benchmark::State& st, int what) {
  const shape s = shape_from(st, what);
  host h{s};
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  auto cur = std::make_unique<owner>(h, s, efd);
  if (!cur->cold(st)) return;
  for (auto _ : st) {
    for (int dev : cur->devices)
      if (!abi::keepalive_enter(*cur->proc, dev, tok)) return st.SkipWithError("enter");
    cur->proc->exit();
    auto next = std::make_unique<owner>(h, s, efd);
    if (!next->open(st, true) || !next->wire(st)) return;
    for (int dev : next->devices)
      if (!abi::keepalive_leave(*next->proc, dev, tok)) return st.SkipWithError("leave");
    cur = std::move(next);
  }
  ::close(efd);
  st.counters["mappings"] = static_cast<double>(s.mappings);
  st.counters["vectors"] = s.vectors;
  st.counters["devices"] = s.devices;
}

// The fd hand-over (CPR) way: fds stay open, every mapping's vaddr is
// invalidated and re-pointed, interrupts re-wired.
void cpr_cycle(benchmark::State& st) {
  const shape s = shape_from(st, 0);
  host h{s};
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  owner o{h, s, efd};
  if (!o.cold(st)) return;
  for (auto _ : st)
    if (!o.unmap_all(st, VFIO_DMA_UNMAP_FLAG_VADDR) || !o.map_all(st, VFIO_DMA_MAP_FLAG_VADDR) || !o.wire(st)) return;
  ::close(efd);
  st.counters["mappings"] = static_cast<double>(s.mappings);
}

// A full re-map: everything unmapped and mapped again, interrupts re-wired.
void remap_cycle(benchmark::State& st) {
  const shape s = shape_from(st, 0);
  host h{s};
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  owner o{h, s, efd};
  if (!o.cold(st)) return;
  for (auto _ : st)
    if (!o.unmap_all(st) || !o.map_all(st) || !o.wire(st)) return;
  ::close(efd);
  st.counters["mappings"] = static_cast<double>(s.mappings);
}

void mapping_args(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {1, 64, 4096, 65536, 1 << 20}) b->Args({n, 4096});
  for (std::int64_t n : {1, 64, 2048}) b->Args({n, 2 << 20});
  for (std::int64_t n : {1, 4}) b->Args({n, 1 << 30});
  b->ArgNames({"mappings", "page"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

static void BM_KeepaliveMappings(benchmark::State& st) { keepalive_cycle(st, 0); }
BENCHMARK(BM_KeepaliveMappings)->Apply(mapping_args);
static void BM_CprMappings(benchmark::State& st) { cpr_cycle(st); }
BENCHMARK(BM_CprMappings)->Apply(mapping_args);
static void BM_FullRemapMappings(benchmark::State& st) { remap_cycle(st); }
BENCHMARK(BM_FullRemapMappings)->Apply(mapping_args);

static void BM_KeepaliveVectors(benchmark::State& st) { keepalive_cycle(st, 1); }
BENCHMARK(BM_KeepaliveVectors)
    ->ArgsProduct({{1, 8, 64, 512, 2048}, {0}})
    ->ArgNames({"vectors", ""})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
static void BM_KeepaliveDevices(benchmark::State& st) { keepalive_cycle(st, 2); }
BENCHMARK(BM_KeepaliveDevices)
    ->ArgsProduct({{1, 4, 16, 64}, {0}})
    ->ArgNames({"devices", ""})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
