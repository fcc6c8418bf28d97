// Writes the seed corpora of the fuzz targets into <dir>/<target>/:
//   handover          valid images: empty, synthetic (two devices, posted and
//                     remapped vectors, several ranges), and the image a sim
//                     host really writes at stage-2 prepare
//   uapi_dispatch     one valid request per command, and one per rule broken
//   sim_kernel_ioctl  the VMM flows: cold start, keepalive across a VMM
//                     restart, across a kexec, a refused image, the masking
//                     fallback, the control node, VFIO queries
// Usage: fuzz_seed_corpus <dir>   (scripts/fuzz.sh --seed)
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sim_uapi_traits.hpp"
#include "handover.hpp"
#include "keepalive_handover.h"
#include "keepalive/abi/ops.hpp"
#include "keepalive/abi/uapi.hpp"
#include "kernel.hpp"
#include "nic_regs.h"
#include "platform.hpp"
#include "sim_ops.hpp"
#include "sim_uapi.h"

namespace {
using namespace keepalive;
namespace fs = std::filesystem;

int failures = 0;
void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_seed_corpus: %s\n", what.c_str());
  ++failures;
}

void write(const fs::path& dir, const std::string& name, const void* data, std::size_t n) {
  fs::create_directories(dir);
  std::ofstream f{dir / name, std::ios::binary | std::ios::trunc};
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) fail("cannot write " + (dir / name).string());
}
void write(const fs::path& dir, const std::string& name, const std::vector<std::byte>& b) {
  write(dir, name, b.data(), b.size());
}
void write(const fs::path& dir, const std::string& name, const std::vector<std::uint8_t>& b) {
  write(dir, name, b.data(), b.size());
}

const token tok = *token::parse("5a0c7e1f-3b2d-4c6e-9f80-a1b2c3d4e5f6");  // tokens[0] of the sim target

// ------------------------------------------------------------------ handover
handover::image synthetic_image() {
  handover::image img;
  img.generation = 3;
  img.event_seq = 41;
  img.iommu = {hpa{0x200000}, 0x300000 | 0x800 | 0xF, hpa{0x402000}, 64};
  img.ranges = {{hpa{0x200000}, 0x2000}, {hpa{0x300000}, 0x100000}, {hpa{0x402000}, 0x1000}};
  handover::device_rec a;
  a.device = bdf{0, 0, 4, 0};
  a.state = VFIO_KEEPALIVE_STATE_FROZEN;
  a.owner = tok;
  a.did = domain_id{2};
  a.levels = 4;
  a.irq_mode = VFIO_KEEPALIVE_IRQ_POSTED;
  a.sl_root = hpa{0x201000};
  a.bar[0] = 0xE0000000;
  a.bar_size[0] = KA_NIC_BAR0_SIZE;
  a.command = 0x6;
  a.msix_ctrl = 0x8003;
  a.vectors = {{msix_index{0}, irte_index{1}, true, vector{0x40}, hpa{0x402000}},
               {msix_index{2}, irte_index{2}, false, vector{2}, hpa{0}}};
  handover::device_rec b = a;
  b.device = bdf{0, 0, 5, 0};
  b.did = domain_id{3};
  b.levels = 3;
  b.irq_mode = VFIO_KEEPALIVE_IRQ_MASKED;
  b.bar[0] = 0xE0100000;
  b.vectors = {{msix_index{1}, irte_index{7}, false, vector{0}, hpa{0}}};
  img.devices = {a, b};
  return img;
}

// The image a sim host writes: a VMM maps RAM, connects a posted vector,
// enters keepalive and exits; the control node prepares stage 2.
std::vector<std::byte> sim_image() {
  using namespace keepalive::sim;
  platform_config pc;
  pc.phys_bytes = 96ull << 20;
  auto plat = platform::create(pc);
  if (!plat) return fail("platform: " + plat.err().message()), std::vector<std::byte>{};
  kernel_config kc;
  kc.map.kernel_end = 64ull << 20;
  auto k = kernel::boot(**plat, kc);
  if (!k) return fail("boot: " + k.err().message()), std::vector<std::byte>{};
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  {
    auto p = (*k)->spawn("vmm");
    int container = *p->open("/dev/vfio/vfio", 0), group = *p->open("/dev/vfio/32", 0), vm = *p->open("/dev/kvm", 0);
    long rc = p->ioctl(group, VFIO_GROUP_SET_CONTAINER, &container);
    rc |= p->ioctl(container, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU}));
    std::string name = "0000:00:04.0";
    const long dev = p->ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name.data());
    vfio_iommu_type1_dma_map m{};
    m.argsz = sizeof m;
    m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    m.vaddr = kc.map.guest_start();
    m.size = 4ull << 20;
    rc |= p->ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
    alignas(8) std::byte buf[sizeof(vfio_irq_set) + 4]{};
    vfio_irq_set s{};
    s.argsz = sizeof buf;
    s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    s.index = VFIO_PCI_MSIX_IRQ_INDEX;
    s.count = 1;
    std::memcpy(buf, &s, sizeof s);
    std::memcpy(buf + sizeof s, &efd, 4);
    rc |= p->ioctl(static_cast<int>(dev), VFIO_DEVICE_SET_IRQS, buf);
    auto pid = abi::make_request<ka_sim_pid>();
    pid.host_apic_id = 1;
    rc |= p->ioctl(vm, KA_SIM_CREATE_PID, &pid);
    auto b = abi::make_request<ka_sim_irq_bypass>();
    b.device_fd = static_cast<int>(dev);
    b.pid_id = pid.out_pid_id;
    b.guest_vector = 0x40;
    b.irqfd = efd;
    rc |= p->ioctl(vm, KA_SIM_IRQ_BYPASS, &b);
    if (dev < 0 || rc != 0) fail("sim image: VMM setup failed");
    if (!abi::keepalive_enter(*p, static_cast<int>(dev), tok)) fail("sim image: enter failed");
    p->exit();
  }
  auto ctl = (*k)->spawn("ctl");
  const int cfd = *ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
  auto prep = abi::stage2_prepare(*ctl, cfd);
  if (!prep) return fail("sim image: prepare: " + prep.err().message()), std::vector<std::byte>{};
  const auto* at = (*plat)->memory().base() + kc.map.handover_start();
  std::vector<std::byte> image(at, at + prep->image_bytes);
  (void)abi::stage2_abort(*ctl, cfd);
  ::close(efd);
  return image;
}

void handover_seeds(const fs::path& dir, const std::vector<std::byte>& real) {
  handover::image empty;
  write(dir, "empty-image", handover::encode(empty));
  const auto syn = handover::encode(synthetic_image());
  if (!handover::decode(syn)) fail("synthetic image does not decode");
  write(dir, "two-devices", syn);
  if (!handover::decode(real)) fail("sim image does not decode");
  write(dir, "sim-stage2-prepare", real);
}

// ------------------------------------------------------------------ dispatch
template <typename T>
void dispatch_seed(const fs::path& dir, std::uint8_t row, const std::string& name, T v) {
  std::vector<std::uint8_t> b{row, 0, 0x5a};
  const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof v);
  write(dir, name, b);
}

void dispatch_seeds(const fs::path& dir) {
  auto enter = abi::make_request<vfio_keepalive_enter>();
  std::memcpy(enter.token, tok.raw().data(), sizeof enter.token);
  enter.flags = VFIO_KEEPALIVE_ENTER_ALLOW_MASKING;
  dispatch_seed(dir, 0, "enter", enter);
  auto leave = abi::make_request<vfio_keepalive_leave>();
  std::memcpy(leave.token, tok.raw().data(), sizeof leave.token);
  dispatch_seed(dir, 1, "leave", leave);
  dispatch_seed(dir, 2, "status", abi::make_request<vfio_keepalive_status>());
  auto iommufd = abi::make_request<vfio_keepalive_iommufd>();
  std::memcpy(iommufd.token, tok.raw().data(), sizeof iommufd.token);
  dispatch_seed(dir, 3, "get-iommufd", iommufd);
  dispatch_seed(dir, 4, "info", abi::make_request<vfio_keepalive_info>());
  auto list = abi::make_request<vfio_keepalive_list>();
  list.nr_entries = 4;
  list.entries_uptr = 0x7f0000001000;
  dispatch_seed(dir, 5, "list", list);
  dispatch_seed(dir, 6, "stage2-prepare", abi::make_request<vfio_keepalive_stage2>());
  dispatch_seed(dir, 7, "stage2-abort", abi::make_request<vfio_keepalive_stage2>());
  dispatch_seed(dir, 8, "event", abi::make_request<vfio_keepalive_event>());
  auto reset = abi::make_request<vfio_keepalive_reset>();
  reset.bdf = bdf{0, 0, 4, 0}.packed();
  dispatch_seed(dir, 9, "reset", reset);
  dispatch_seed(dir, 10, "sim-create-pid", abi::make_request<ka_sim_pid>());
  auto bypass = abi::make_request<ka_sim_irq_bypass>();
  bypass.flags = KA_SIM_BYPASS_DISCONNECT;
  dispatch_seed(dir, 11, "sim-irq-bypass", bypass);
  // Each rule broken once: a newer (longer) struct with a zero and a non-zero
  // tail, an older (shorter) one, an unknown flag, a reserved field set.
  struct longer {
    vfio_keepalive_status s;
    std::uint64_t tail;
  };
  dispatch_seed(dir, 2, "status-zero-tail", longer{abi::make_request<vfio_keepalive_status>(), 0});
  longer bad{abi::make_request<vfio_keepalive_status>(), 1};
  bad.s.size = sizeof bad;
  dispatch_seed(dir, 2, "status-nonzero-tail", bad);
  auto shorter = abi::make_request<vfio_keepalive_info>();
  shorter.size = 12;
  dispatch_seed(dir, 4, "info-short", shorter);
  auto flags = abi::make_request<vfio_keepalive_enter>();
  flags.flags = 2;
  dispatch_seed(dir, 0, "enter-unknown-flag", flags);
  auto reserved = abi::make_request<vfio_keepalive_reset>();
  reserved.__reserved = 1;
  dispatch_seed(dir, 9, "reset-reserved", reserved);
  iommufd.__reserved = 1;
  dispatch_seed(dir, 3, "get-iommufd-reserved", iommufd);
}

// ------------------------------------------------------------------ sim ioctl
void sim_seeds(const fs::path& dir, const std::vector<std::byte>& image) {
  using fuzz::node;
  using fuzz::program;
  auto vmm_setup = [](program& p) {
    p.access(fuzz::op::pwrite, node::device, 0, 4, {0x06, 0x00});  // memory space + bus master
    p.ioctl(node::container, VFIO_IOMMU_MAP_DMA).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_SET_IRQS).templ(0);
    p.ioctl(node::vm, KA_SIM_CREATE_PID).templ(1);
    p.ioctl(node::vm, KA_SIM_IRQ_BYPASS).templ(0);
  };
  write(dir, "nothing", program{}.bytes);
  {
    program p;
    vmm_setup(p);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD).templ(0);  // RUNNING: ENOENT
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_GET_STATUS).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD).templ(0);  // KEPT_ALIVE: EBUSY
    write(dir, "enter", p.bytes);
  }
  {
    program p;
    vmm_setup(p);
    p.msi(0);  // delivered to the vCPU (posted)
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(0);
    p.restart(1);
    p.msi(0);  // while nobody owns the device: held in the descriptor
    vmm_setup(p);  // reclaim: drained into the new owner's descriptor
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD).templ(0);  // RECLAIMED: EBUSY
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_LEAVE).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_GET_STATUS).templ(0);
    write(dir, "stage1-restart-reclaim", p.bytes);
  }
  for (std::uint8_t host : {std::uint8_t{0}, std::uint8_t{1}}) {
    program p{host};
    vmm_setup(p);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(host ? 0x80 : 0);
    p.kexec(fuzz::kexec_prepare, {}, 0);
    p.msi(0);  // RESTORED, nobody owns it: held
    p.get_device(0, 1);  // reclaim with the token
    p.ioctl(node::control, VFIO_KEEPALIVE_LIST_DEVICES).templ(0);
    vmm_setup(p);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_LEAVE).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_GET_INFO).templ(0);
    write(dir, host ? "stage2-kexec-masking" : "stage2-kexec-posted", p.bytes);
  }
  {
    program p;
    vmm_setup(p);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(0);
    p.kexec(fuzz::kexec_prepare | fuzz::kexec_patch, {{100, 0x10}}, 1);
    p.ioctl(node::control, VFIO_KEEPALIVE_READ_EVENT).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_RESET_DEVICE).templ(0);
    write(dir, "stage2-refused-image", p.bytes);
  }
  // Sealed images with one wrong field (offsets from the image this flow
  // writes, as sim_image() shows it): the new kernel's own checks must refuse
  // them. The IOMMU root table, the first range, the device's page-table root.
  {
    keepalive_handover_hdr_ser hdr{};
    if (image.size() >= sizeof hdr) std::memcpy(&hdr, image.data(), sizeof hdr);
    const std::size_t iommu = sizeof(keepalive_handover_hdr_ser), ranges = iommu + sizeof(keepalive_iommu_ser);
    const std::size_t device = ranges + hdr.nr_ranges * sizeof(keepalive_range_ser);
    const std::pair<const char*, std::size_t> fields[] = {
        {"stage2-sealed-bad-root-table", iommu + offsetof(keepalive_iommu_ser, root_table) + 2},
        {"stage2-sealed-bad-range", ranges + offsetof(keepalive_range_ser, start) + 2},
        {"stage2-sealed-bad-sl-root", device + offsetof(keepalive_device_ser, sl_root) + 3},
    };
    for (const auto& [name, offset] : fields) {
      program p;
      vmm_setup(p);
      p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(0);
      p.kexec(fuzz::kexec_prepare | fuzz::kexec_patch | fuzz::kexec_reseal,
              {{static_cast<std::uint16_t>(offset), 0x01}}, 1);
      p.ioctl(node::control, VFIO_KEEPALIVE_READ_EVENT).templ(0);
      write(dir, name, p.bytes);
    }
  }
  {
    program p;
    vmm_setup(p);
    p.ioctl(node::device, VFIO_DEVICE_KEEPALIVE_ENTER).templ(0);
    p.restart(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_LIST_DEVICES).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_STAGE2_PREPARE).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_STAGE2_ABORT).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_RESET_DEVICE).templ(0);
    p.ioctl(node::control, VFIO_KEEPALIVE_READ_EVENT).templ(0);
    write(dir, "control-node", p.bytes);
  }
  {
    program p;
    p.ioctl(node::container, VFIO_GET_API_VERSION);
    p.ioctl(node::container, VFIO_CHECK_EXTENSION).u16(0).u16(0);
    p.ioctl(node::group, VFIO_GROUP_GET_STATUS).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_GET_INFO).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_GET_REGION_INFO).templ(VFIO_PCI_CONFIG_REGION_INDEX);
    p.ioctl(node::device, VFIO_DEVICE_GET_IRQ_INFO).templ(0);
    p.access(fuzz::op::pread, node::device, 0, 0, std::vector<std::uint8_t>(64));
    p.access(fuzz::op::pwrite, node::device, 0, 4, {0x06, 0x00});
    p.access(fuzz::op::pread, node::device, 1, KA_NIC_STAT_PACKETS, std::vector<std::uint8_t>(8));
    p.ioctl(node::device, VFIO_DEVICE_RESET);
    p.ioctl(node::container, VFIO_IOMMU_MAP_DMA).templ(0);
    p.ioctl(node::container, VFIO_IOMMU_UNMAP_DMA).templ(0);
    p.ioctl(node::device, VFIO_DEVICE_SET_IRQS).templ(0x0c);
    p.msi(1).msi(0x80).u16(0).u16(0xfee0).u16(0x40).u16(0);  // remapped; then a compatibility-format MSI
    write(dir, "vfio-queries", p.bytes);
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus-dir>\n", argv[0]);
    return 2;
  }
  const fs::path root{argv[1]};
  const auto image = sim_image();
  handover_seeds(root / "handover", image);
  dispatch_seeds(root / "uapi_dispatch");
  sim_seeds(root / "sim_kernel_ioctl", image);
  return failures == 0 ? 0 : 1;
}
