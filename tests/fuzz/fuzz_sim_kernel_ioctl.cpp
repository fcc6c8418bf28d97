// The sim host's whole syscall surface (VFIO container/group/device, the
// keepalive device and control ioctls, the KA_SIM_* VM calls, region
// pread/pwrite, open/close), VMM restarts, stage-2 kexec (with the image
// optionally patched and re-sealed) and device MSIs, driven by sequences of
// operations (sim_ops.hpp). Traps (findings): a crash or an access to memory
// the kernel was not given (ASan/UBSan); a result that is neither >= 0 nor an
// errno documented for that call; RESET_DEVICE succeeding on a device this
// VMM holds; GET_IOMMUFD succeeding (the sim has no iommufd context); LIST_DEVICES breaking its contract; and, after each input, any
// trace of the input left in the hardware (a context entry, an IRTE) or in
// the kernel's page count.
//
// Arguments are made safe exactly where the real kernel's copy_from_user
// makes them safe, and nowhere else: every struct lives in a heap buffer at
// least as large as the size it declares (a lie about the size is an EFAULT
// the sim cannot model); LIST_DEVICES gets a buffer of exactly the declared
// capacity; eventfds are the harness's own (or -1); names are NUL-terminated
// within the input. Kernel fds (device_fd, SET_CONTAINER) stay arbitrary: the
// sim kernel looks them up in the process's table, as Linux does.
//
// Two persistent hosts (platform + kernel, with and without posted
// interrupts), recreated every host_lifetime inputs. The wire is off
// (RATE_PPS is never written): no device thread does anything, and MSIs come
// only from the input, on the fuzzing thread. Each input runs in a fresh VMM
// process; afterwards the process exits, stage 2 is aborted and every device
// is reset to RUNNING through the control node, so inputs do not depend on
// each other.
#include <linux/vfio.h>
#include <linux/vfio_keepalive.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sim_uapi_traits.hpp"
#include "handover.hpp"
#include "keepalive_handover.h"
#include "keepalive/abi/ops.hpp"
#include "keepalive/abi/uapi.hpp"
#include "keepalive/hw/irte.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/root_context.hpp"
#include "keepalive/hw/pci.hpp"
#include "kernel.hpp"
#include "nic_regs.h"
#include "platform.hpp"
#include "sim_ops.hpp"
#include "sim_uapi.h"

namespace {
using namespace keepalive;
using namespace keepalive::sim;
using fuzz::arg;
using fuzz::node;

constexpr unsigned host_lifetime = 2000;  // inputs before a host is rebuilt (bounds its memory)
constexpr std::size_t max_vfio_buffer = 4096;
constexpr std::size_t max_list_capacity = 256;
constexpr std::uint16_t quiescent_irtes_scanned = 1024;  // allocation is lowest-first
constexpr std::uint64_t page_slack = 32;
const bdf nics[2] = {bdf{0, 0, 4, 0}, bdf{0, 0, 5, 0}};
const token tokens[3] = {*token::parse("5a0c7e1f-3b2d-4c6e-9f80-a1b2c3d4e5f6"),
                         *token::parse("0f1e2d3c-4b5a-4697-8877-665544332211"), token{}};

// KEEPALIVE_FUZZ_TRACE=1: every call and its result on stderr (to read what an input does).
const bool trace = std::getenv("KEEPALIVE_FUZZ_TRACE") != nullptr;
// KEEPALIVE_FUZZ_SKIP=pages,context,irte,reseal,owned-reset: skip those
// quiescence checks, never re-seal a patched handover image, never reset a
// device through the control node while this VMM holds a device fd (to look
// past a known finding while it is being fixed).
bool skipped(const char* check) {
  static const std::string skip = std::getenv("KEEPALIVE_FUZZ_SKIP") ? std::getenv("KEEPALIVE_FUZZ_SKIP") : "";
  return skip.find(check) != std::string::npos;
}

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_sim_kernel_ioctl: %s\n", what.c_str());
  __builtin_trap();
}

class reader {
 public:
  reader(const std::uint8_t* d, std::size_t n) : d_{d}, n_{n} {}
  [[nodiscard]] bool empty() const { return pos_ >= n_; }
  std::uint8_t u8() { return pos_ < n_ ? d_[pos_++] : 0; }
  std::uint16_t u16() {
    const std::uint16_t lo = u8();
    return static_cast<std::uint16_t>(lo | (u8() << 8));
  }
  std::uint32_t u32() {
    const std::uint32_t lo = u16();
    return lo | (std::uint32_t{u16()} << 16);
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_, pos_ = 0;
};

struct host {
  bool posted;
  std::unique_ptr<platform> plat;
  std::unique_ptr<kernel> k;
  kernel_config kcfg;
  unsigned inputs = 0;
  unsigned boots = 0, baseline_boot = ~0u;  // kernel instances; the one the baseline is of
  std::uint64_t baseline_pages = 0;

  explicit host(bool with_posting) : posted{with_posting} { rebuild(); }
  void rebuild() {
    k.reset();
    plat.reset();
    platform_config pc;
    pc.phys_bytes = 96ull << 20;
    pc.nics = 2;
    pc.posted_interrupts = posted;
    // The FLR's 100 ms wait (nothing observable happens during it) would cap
    // the target at a few inputs per second.
    pc.flr_wait = std::chrono::milliseconds{0};
    auto p = platform::create(pc);
    if (!p) finding("platform::create: " + p.err().message());
    plat = std::move(*p);
    kcfg.map.kernel_end = 64ull << 20;
    auto booted = kernel::boot(*plat, kcfg);
    if (!booted) finding("kernel::boot: " + booted.err().message());
    k = std::move(*booted);
    inputs = 0;
    ++boots;
  }
};

struct harness {
  host hosts[2]{host{true}, host{false}};
  int eventfds[3];
  harness() {
    for (int& fd : eventfds) {
      fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (fd < 0) finding("eventfd");
    }
  }
};

// One input: a VMM process on one host.
class session {
 public:
  session(harness& h, host& hs) : h_{h}, host_{hs} {}

  void run(reader& in) {
    start_vmm(0);
    while (!in.empty()) step(in);
    finish();
  }

 private:
  // ------------------------------------------------------------ process
  void start_vmm(std::uint8_t tok) {
    proc_ = host_.k->spawn("fuzz-vmm");
    fds_.clear();
    device_bdf_.clear();
    slot_.fill(-1);
    must_open("/dev/vfio/vfio", node::container);
    must_open("/dev/vfio/" + std::to_string(nics[0].devfn()), node::group);
    must_open(VFIO_KEEPALIVE_CTL_PATH, node::control);
    must_open("/dev/kvm", node::vm);
    int container = slot(node::container);
    if (proc_->ioctl(slot(node::group), VFIO_GROUP_SET_CONTAINER, &container) != 0) finding("setup: SET_CONTAINER failed");
    if (proc_->ioctl(container, VFIO_SET_IOMMU, reinterpret_cast<void*>(std::uintptr_t{VFIO_TYPE1v2_IOMMU})) != 0)
      finding("setup: SET_IOMMU failed");
    std::string name = device_name(0, tok);
    do_ioctl(slot(node::group), fuzz::command_index(VFIO_GROUP_GET_DEVICE_FD), name.data());
  }

  void must_open(const std::string& path, node kind) {
    auto fd = proc_->open(path, 0);
    if (!fd) finding("setup: open " + path + ": " + fd.err().message());
    fds_[*fd] = kind;
    slot(kind) = *fd;
  }
  int& slot(node kind) { return slot_[static_cast<std::size_t>(kind)]; }

  void exit_vmm() {
    if (proc_) proc_->exit();
    proc_.reset();
    fds_.clear();
    device_bdf_.clear();
  }

  // Back to the state every input starts from: no process, every device
  // RUNNING, no stage 2 prepared, no event queued.
  void finish() {
    exit_vmm();
    auto ctl = host_.k->spawn("fuzz-ctl");
    auto fd = ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
    if (!fd) finding("finish: open control node");
    auto rows = abi::list_devices(*ctl, *fd);
    if (!rows) finding("finish: LIST_DEVICES: " + rows.err().message());
    // Prepared (even with no device frozen) or not: the image must not reach
    // a later input's kexec.
    bool frozen = false;
    for (const auto& r : *rows) frozen = frozen || r.state == abi::device_state::frozen;
    if (auto ab = abi::stage2_abort(*ctl, *fd); !ab && (frozen || ab.code() != errc::busy))
      finding("finish: STAGE2_ABORT: " + ab.err().message());
    for (const auto& r : *rows)
      if (auto st = abi::reset_device(*ctl, *fd, r.device); !st)
        finding("finish: RESET_DEVICE " + r.device.to_string() + ": " + st.err().message());
    auto after = abi::list_devices(*ctl, *fd);
    if (!after || !after->empty()) finding("finish: a device is still not RUNNING after reset");
    for (int i = 0; i < 2048; ++i) {
      auto e = abi::read_event(*ctl, *fd);
      if (!e) {
        if (e.code() != errc::again) finding("finish: READ_EVENT: " + e.err().message());
        break;
      }
    }
    ctl->exit();
    check_quiescent();
  }

  // With no process left and every device RUNNING, nothing of them may remain
  // in the hardware's view (no context entry, no IRTE), and the kernel's page
  // count may not creep up from input to input (descriptor pages and context
  // tables are kept for reuse: page_slack of them).
  void check_quiescent() {
    auto& mem = host_.plat->memory();
    const hpa root = host_.plat->vtd().root_table();
    for (bdf dev : nics)
      if (auto ctx = hw::resolve_context(mem, root, dev); ctx && !skipped("context"))
        finding("context entry of " + dev.to_string() + " still present with every device RUNNING and unowned");
    const hpa ir = hw::irta_reg::from_raw(host_.plat->vtd().irta()).base();
    for (std::uint16_t i = 0; i < quiescent_irtes_scanned; ++i)
      if (hw::irte_load(mem.word_ptr(ir + std::uint64_t{i} * hw::irte_bytes)).present() && !skipped("irte"))
        finding("IRTE " + std::to_string(i) + " still present with every device RUNNING and unowned");
    const auto text = host_.k->describe();
    const auto at = text.find("pages in use ");
    const std::uint64_t pages = at == std::string::npos ? 0 : std::strtoull(text.c_str() + at + 13, nullptr, 10);
    if (host_.baseline_boot != host_.boots) {
      host_.baseline_boot = host_.boots;
      host_.baseline_pages = pages;
    }
    if (pages > host_.baseline_pages + page_slack && !skipped("pages"))
      finding("kernel pages in use grew from " + std::to_string(host_.baseline_pages) + " to " + std::to_string(pages) +
              " over the inputs since boot: a leak (this input leaks: run it with -runs=" +
              std::to_string(page_slack + 2) + " to see it grow)");
  }

  // ------------------------------------------------------------ operations
  void step(reader& in) {
    switch (static_cast<fuzz::op>(in.u8() % static_cast<std::uint8_t>(fuzz::op::count))) {
      case fuzz::op::ioctl: return op_ioctl(in);
      case fuzz::op::pread: return op_rw(in, false);
      case fuzz::op::pwrite: return op_rw(in, true);
      case fuzz::op::open: return op_open(in);
      case fuzz::op::close: return op_close(in);
      case fuzz::op::get_device: return op_get_device(in);
      case fuzz::op::restart: {
        const std::uint8_t tok = in.u8();
        if (trace) std::fprintf(stderr, "  restart (token %u)\n", tok);
        exit_vmm();
        return start_vmm(tok);
      }
      case fuzz::op::kexec: return op_kexec(in);
      case fuzz::op::msi: return op_msi(in);
      case fuzz::op::count: break;
    }
  }

  int pick_fd(std::uint8_t sel) {
    if (sel < fuzz::fd_last_opened) return slot_[sel];
    if (sel == fuzz::fd_last_opened) return last_opened_;
    return sel >= fuzz::fd_raw_base ? sel - fuzz::fd_raw_base : -1;
  }
  [[nodiscard]] std::vector<int> open_devices() const {
    std::vector<int> out;
    for (auto [fd, kind] : fds_)
      if (kind == node::device) out.push_back(fd);
    return out;
  }
  [[nodiscard]] node kind_of(int fd) const {
    auto it = fds_.find(fd);
    return it == fds_.end() ? node::none : it->second;
  }
  void forget_fd(int fd) {
    fds_.erase(fd);
    device_bdf_.erase(fd);
    for (int& s : slot_)
      if (s == fd) s = -1;
    if (last_opened_ == fd) last_opened_ = -1;
  }
  void opened(int fd, node kind) {
    fds_[fd] = kind;
    slot(kind) = fd;
    last_opened_ = fd;
  }

  static std::string device_name(std::uint8_t device, std::uint8_t tok) {
    std::string name = (device & 2) ? std::string{"0000:00:1f.0"} : nics[device & 1].to_string();
    if (tok == 0) return name;
    if (tok <= 3) return name + " vf_token=" + tokens[tok - 1].to_string();
    return name + (tok & 1 ? " vf_token=not-a-uuid" : " token=");
  }

  void op_get_device(reader& in) {
    const int group = pick_fd(in.u8());
    const std::uint8_t device = in.u8();
    std::string name = device_name(device, in.u8());
    do_ioctl(group, fuzz::command_index(VFIO_GROUP_GET_DEVICE_FD), name.data());
  }

  void op_open(reader& in) {
    const std::uint8_t which = in.u8();
    std::string path;
    node kind = node::none;
    switch (which) {
      case 0: path = "/dev/vfio/vfio", kind = node::container; break;
      case 1: path = "/dev/vfio/" + std::to_string(nics[0].devfn()), kind = node::group; break;
      case 2: path = VFIO_KEEPALIVE_CTL_PATH, kind = node::control; break;
      case 3: path = "/dev/kvm", kind = node::vm; break;
      case 4: path = "/dev/vfio/" + std::to_string(in.u8()), kind = node::group; break;
      default: {
        const std::uint8_t n = in.u8();
        for (unsigned i = 0; i < n; ++i) path.push_back(static_cast<char>(in.u8()));
        if (path == "/dev/vfio/vfio") kind = node::container;
        else if (path == VFIO_KEEPALIVE_CTL_PATH) kind = node::control;
        else if (path == "/dev/kvm") kind = node::vm;
        else kind = node::group;
      }
    }
    auto fd = proc_->open(path, 0);
    if (trace) std::fprintf(stderr, "  open(%s) = %s\n", path.c_str(), fd ? std::to_string(*fd).c_str() : fd.err().message().c_str());
    if (fd) {
      if (*fd < 0 || fds_.count(*fd)) finding("open returned fd " + std::to_string(*fd) + " that is negative or in use");
      opened(*fd, kind);
      return;
    }
    // Fixed nodes always open; groups may be busy (open elsewhere) or absent.
    if (which <= 3 && which != 1) finding("open " + path + ": " + fd.err().message());
    if (fd.code() != errc::not_found && fd.code() != errc::busy) finding("open " + path + ": undocumented " + fd.err().message());
  }

  void op_close(reader& in) {
    const int fd = pick_fd(in.u8());
    const errc e = proc_->close(fd);
    if (trace) std::fprintf(stderr, "  close(%d) = %s\n", fd, std::string{errc_name(e)}.c_str());
    const bool known = kind_of(fd) != node::none;
    if (known && e != errc::ok) finding("close of an open fd: " + std::string{errc_name(e)});
    if (!known && e != errc::bad_fd) finding("close of fd " + std::to_string(fd) + " not open: " + std::string{errc_name(e)});
    forget_fd(fd);
  }

  void op_rw(reader& in, bool write) {
    const int fd = pick_fd(in.u8());
    const std::uint8_t region_sel = in.u8();
    const std::uint64_t offset = in.u16();
    const std::size_t len = in.u16() % (max_vfio_buffer + 1);
    const unsigned region = region_sel == 0 ? VFIO_PCI_CONFIG_REGION_INDEX
                            : region_sel == 1 ? VFIO_PCI_BAR0_REGION_INDEX
                                              : region_sel;
    std::vector<std::byte> buf(len);
    if (write)
      for (auto& b : buf) b = static_cast<std::byte>(in.u8());
    // The wire stays off: no packets, so no interrupt threads racing the input.
    if (write && region == VFIO_PCI_BAR0_REGION_INDEX && offset < KA_NIC_RATE_PPS + 8 && offset + len > KA_NIC_RATE_PPS)
      return;
    const std::uint64_t at = (std::uint64_t{region} << 40) | offset;
    auto r = write ? proc_->pwrite(fd, buf, at) : proc_->pread(fd, buf, at);
    if (trace) std::fprintf(stderr, "  %s(fd %d, %#llx, %zu) = %s\n", write ? "pwrite" : "pread", fd,
                            static_cast<unsigned long long>(at), len, r ? "ok" : std::string{errc_name(r.code())}.c_str());
    const node kind = kind_of(fd);
    const char* what = write ? "pwrite" : "pread";
    if (r) {
      if (*r != len) finding(std::string{what} + ": short transfer");
      if (kind != node::device) finding(std::string{what} + " succeeded on a non-device fd");
      return;
    }
    if (r.code() == errc::bad_fd && kind == node::none) return;
    if (r.code() == errc::invalid && kind != node::none) return;
    finding(std::string{what} + ": undocumented " + r.err().message());
  }

  // The device side: what the NIC's thread would send, from the fuzzing
  // thread, so the interrupt paths (remapped, posted, parked, drained at
  // reclaim) run deterministically with the wire off.
  void op_msi(reader& in) {
    const std::uint8_t which = in.u8();
    const bdf dev = nics[(which >> 2) & 1];
    if (which & 0x80) {
      const std::uint32_t address = in.u32(), data = in.u32();
      if (trace) std::fprintf(stderr, "  msi(%s, %#x, %#x)\n", dev.to_string().c_str(), address, data);
      host_.plat->vtd().msi(dev.source_id(), address, data);
      return;
    }
    // As the NIC signals: only with Bus Master and MSI-X enabled; a masked
    // entry would only set its pending bit, which the device alone can do.
    auto* fn = host_.plat->find(dev);
    auto read8 = [&](std::uint16_t off) { return static_cast<std::uint8_t>(fn->config_read(off, 1)); };
    const auto cap = hw::pci::find_capability(read8, hw::pci::cap_id::msix);
    const std::uint32_t ctrl = cap ? fn->config_read(static_cast<std::uint16_t>(*cap + hw::msix_cap::message_control), 2) : 0;
    const bool can_signal = (fn->config_read(hw::pci::command, 2) & hw::pci::command_bus_master) != 0 &&
                            (ctrl & hw::msix_cap::control_enable) != 0;
    const std::uint64_t entry = KA_NIC_MSIX_TABLE_OFF + std::uint64_t{which & 3u} * 16;
    const std::uint64_t address = fn->mmio_read(0, entry, 4) | (fn->mmio_read(0, entry + 4, 4) << 32);
    const auto data = static_cast<std::uint32_t>(fn->mmio_read(0, entry + 8, 4));
    const bool masked = (ctrl & hw::msix_cap::control_function_mask) != 0 || (fn->mmio_read(0, entry + 12, 4) & 1) != 0;
    if (trace)
      std::fprintf(stderr, "  msi(%s entry %u)%s\n", dev.to_string().c_str(), which & 3u,
                   !can_signal ? " cannot signal" : masked ? " masked" : "");
    if (can_signal && !masked) host_.plat->vtd().msi(dev.source_id(), address, data);
  }

  void op_kexec(reader& in) {
    const std::uint8_t flags = in.u8();
    std::vector<std::pair<std::uint16_t, std::uint8_t>> patches(in.u8());
    for (auto& [offset, x] : patches) {
      offset = in.u16();
      x = in.u8();
    }
    const std::uint8_t tok = in.u8();
    exit_vmm();
    if (flags & fuzz::kexec_prepare) {
      auto ctl = host_.k->spawn("fuzz-ctl");
      auto fd = ctl->open(VFIO_KEEPALIVE_CTL_PATH, 0);
      if (!fd) finding("kexec: open control node");
      auto prep = abi::stage2_prepare(*ctl, *fd);
      if (!prep && prep.code() != errc::busy && prep.code() != errc::no_memory)
        finding("kexec: STAGE2_PREPARE: undocumented " + prep.err().message());
      if (prep && prep->image_bytes >= sizeof(keepalive_handover_hdr_ser)) {
        std::span<std::byte> image{host_.plat->memory().base() + host_.kcfg.map.handover_start(),
                                   static_cast<std::size_t>(prep->image_bytes)};
        if (flags & fuzz::kexec_patch)
          for (auto [offset, x] : patches) image[offset % image.size()] ^= static_cast<std::byte>(x ? x : 1);
        if ((flags & fuzz::kexec_reseal) && !skipped("reseal")) {
          const std::uint64_t total = image.size();
          std::memcpy(image.data() + offsetof(keepalive_handover_hdr_ser, total_bytes), &total, sizeof total);
          std::memset(image.data() + offsetof(keepalive_handover_hdr_ser, checksum), 0, sizeof(std::uint32_t));
          const std::uint32_t sum = handover::crc32c(image);
          std::memcpy(image.data() + offsetof(keepalive_handover_hdr_ser, checksum), &sum, sizeof sum);
        }
      }
      ctl->exit();
    }
    if (trace) std::fprintf(stderr, "  kexec (flags %#x, %zu patches)\n", flags, patches.size());
    auto next = sim::kexec(std::move(host_.k));
    if (!next) finding("kexec: boot failed: " + next.err().message());
    host_.k = std::move(*next);
    ++host_.boots;
    start_vmm(tok);
  }

  // ------------------------------------------------------------ ioctls
  void op_ioctl(reader& in) {
    const int fd = pick_fd(in.u8());
    std::uint8_t index = in.u8();
    unsigned long cmd = 0;
    if (index < fuzz::commands.size()) {
      cmd = fuzz::commands[index].cmd;
    } else {
      cmd = in.u32();
      index = fuzz::command_index(cmd);
    }
    if (index == 0xff) {
      // Not a command of the sim host: refused without touching the argument.
      std::vector<std::byte> scratch(max_vfio_buffer);
      const long rc = proc_->ioctl(fd, cmd, scratch.data());
      const long want = kind_of(fd) == node::none ? -EBADF : -ENOTTY;
      if (rc != want) finding("unknown ioctl " + std::to_string(cmd) + ": " + std::to_string(rc));
      return;
    }
    const auto& c = fuzz::commands[index];
    switch (c.kind) {
      case arg::none: (void)do_ioctl(fd, index, nullptr); return;
      case arg::integer: {
        const std::uintptr_t v = VFIO_TYPE1v2_IOMMU ^ in.u32();
        (void)do_ioctl(fd, index, reinterpret_cast<void*>(v));
        return;
      }
      case arg::int_ptr: {
        int v = slot(node::container) ^ static_cast<int>(in.u32());
        (void)do_ioctl(fd, index, &v);
        return;
      }
      case arg::string: {
        const std::uint8_t n = in.u8();
        std::string s;
        for (unsigned i = 0; i < n; ++i) s.push_back(static_cast<char>(in.u8()));
        (void)do_ioctl(fd, index, s.data());
        return;
      }
      case arg::vfio:
      case arg::sized: return struct_ioctl(fd, index, in);
    }
  }

  // The request a correct VMM would send for `cmd`, chosen by `sel`.
  std::vector<std::byte> templ(unsigned long cmd, std::uint8_t sel) {
    auto as_bytes = [](const auto& v) {
      const auto* p = reinterpret_cast<const std::byte*>(&v);
      return std::vector<std::byte>(p, p + sizeof v);
    };
    auto copy_token = [](auto& field, const token& t) { std::memcpy(field, t.raw().data(), sizeof field); };
    switch (cmd) {
      case VFIO_IOMMU_MAP_DMA: {
        vfio_iommu_type1_dma_map m{};
        m.argsz = sizeof m;
        m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
        m.iova = std::uint64_t{sel} << 21;
        m.vaddr = host_.kcfg.map.guest_start() + (static_cast<std::uint64_t>(sel % 16) << 21);
        m.size = 2ull << 20;
        return as_bytes(m);
      }
      case VFIO_IOMMU_UNMAP_DMA: {
        vfio_iommu_type1_dma_unmap u{};
        u.argsz = sizeof u;
        u.iova = std::uint64_t{sel} << 21;
        u.size = 2ull << 20;
        return as_bytes(u);
      }
      case VFIO_GROUP_GET_STATUS: {
        vfio_group_status s{};
        s.argsz = sizeof s;
        return as_bytes(s);
      }
      case VFIO_DEVICE_GET_INFO: {
        vfio_device_info i{};
        i.argsz = sizeof i;
        return as_bytes(i);
      }
      case VFIO_DEVICE_GET_REGION_INFO: {
        vfio_region_info r{};
        r.argsz = sizeof r;
        r.index = sel;
        return as_bytes(r);
      }
      case VFIO_DEVICE_GET_IRQ_INFO: {
        vfio_irq_info q{};
        q.argsz = sizeof q;
        q.index = sel == 0 ? VFIO_PCI_MSIX_IRQ_INDEX : sel;
        return as_bytes(q);
      }
      case VFIO_DEVICE_SET_IRQS: {
        const std::uint32_t start = sel & 3, count = 1 + ((sel >> 2) & 3);
        vfio_irq_set s{};
        s.argsz = static_cast<std::uint32_t>(sizeof s + count * sizeof(std::int32_t));
        s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        s.index = VFIO_PCI_MSIX_IRQ_INDEX;
        s.start = start;
        s.count = count;
        auto b = as_bytes(s);
        b.resize(s.argsz);  // fd slots: 0 = the harness's first eventfd
        return b;
      }
      case VFIO_DEVICE_KEEPALIVE_ENTER: {
        auto r = abi::make_request<vfio_keepalive_enter>();
        copy_token(r.token, tokens[(sel & 0x7f) % 3]);
        if (sel & 0x80) r.flags = VFIO_KEEPALIVE_ENTER_ALLOW_MASKING;
        return as_bytes(r);
      }
      case VFIO_DEVICE_KEEPALIVE_LEAVE: {
        auto r = abi::make_request<vfio_keepalive_leave>();
        copy_token(r.token, tokens[sel % 3]);
        return as_bytes(r);
      }
      case VFIO_DEVICE_KEEPALIVE_GET_STATUS: return as_bytes(abi::make_request<vfio_keepalive_status>());
      case VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD: {
        auto r = abi::make_request<vfio_keepalive_iommufd>();
        copy_token(r.token, tokens[sel % 3]);
        return as_bytes(r);
      }
      case VFIO_KEEPALIVE_GET_INFO: return as_bytes(abi::make_request<vfio_keepalive_info>());
      case VFIO_KEEPALIVE_LIST_DEVICES: {
        auto r = abi::make_request<vfio_keepalive_list>();
        r.nr_entries = sel == 0 ? 8u : sel - 1u;
        return as_bytes(r);
      }
      case VFIO_KEEPALIVE_STAGE2_PREPARE:
      case VFIO_KEEPALIVE_STAGE2_ABORT: return as_bytes(abi::make_request<vfio_keepalive_stage2>());
      case VFIO_KEEPALIVE_READ_EVENT: return as_bytes(abi::make_request<vfio_keepalive_event>());
      case VFIO_KEEPALIVE_RESET_DEVICE: {
        auto r = abi::make_request<vfio_keepalive_reset>();
        r.bdf = nics[sel & 1].packed();
        return as_bytes(r);
      }
      case KA_SIM_CREATE_PID: {
        auto r = abi::make_request<ka_sim_pid>();
        r.host_apic_id = sel;
        return as_bytes(r);
      }
      case KA_SIM_IRQ_BYPASS: {
        auto r = abi::make_request<ka_sim_irq_bypass>();
        if (sel & 1) r.flags = KA_SIM_BYPASS_DISCONNECT;
        r.device_fd = slot(node::device);
        r.msix_index = (sel >> 1) & 3;
        r.pid_id = last_pid_id_;
        r.guest_vector = 0x40u + ((sel >> 3) & 0xf);
        r.irqfd = 0;  // slot 0: the harness's first eventfd
        return as_bytes(r);
      }
      default: finding("no template for " + std::string{fuzz::commands[fuzz::command_index(cmd)].name});
    }
  }

  // A harness eventfd for a fd value from the input (negative stays -1).
  int safe_eventfd(std::int32_t v) const { return v < 0 ? -1 : h_.eventfds[static_cast<unsigned>(v) % 3]; }

  void struct_ioctl(int fd, std::uint8_t index, reader& in) {
    const auto& c = fuzz::commands[index];
    const std::uint8_t sel = in.u8();
    std::vector<std::byte> t = templ(c.cmd, sel);
    std::uint32_t declared = 0;
    std::memcpy(&declared, t.data(), 4);
    declared ^= in.u16();
    // The buffer the "user" really has: at least what the struct declares
    // (the real kernel would EFAULT past mapped memory), and for VFIO, which
    // copies its minimal struct regardless of argsz, at least the struct.
    std::size_t len = c.kind == arg::sized ? std::max<std::size_t>(declared, 4)
                                           : std::max(t.size(), std::min<std::size_t>(declared, max_vfio_buffer));
    auto buf = std::make_unique<std::byte[]>(len);  // exact size: ASan guards both ends
    std::memset(buf.get(), 0, len);
    std::memcpy(buf.get(), t.data(), std::min(len, t.size()));
    const std::uint8_t patches = in.u8();
    for (unsigned i = 0; i < patches; ++i) {
      const std::uint8_t at = in.u8();
      buf[at % len] ^= static_cast<std::byte>(in.u8());
    }
    std::memcpy(buf.get(), &declared, 4);

    std::unique_ptr<vfio_keepalive_device_entry[]> entries;
    std::size_t capacity = 0;
    switch (c.cmd) {
      case VFIO_DEVICE_SET_IRQS:
        for (std::size_t off = sizeof(vfio_irq_set); off + 4 <= len; off += 4) {
          std::int32_t v = 0;
          std::memcpy(&v, buf.get() + off, 4);
          v = safe_eventfd(v);
          std::memcpy(buf.get() + off, &v, 4);
        }
        break;
      case KA_SIM_IRQ_BYPASS:
        if (len >= offsetof(ka_sim_irq_bypass, irqfd) + 4) {
          std::int32_t v = 0;
          std::memcpy(&v, buf.get() + offsetof(ka_sim_irq_bypass, irqfd), 4);
          v = safe_eventfd(v);
          std::memcpy(buf.get() + offsetof(ka_sim_irq_bypass, irqfd), &v, 4);
        }
        break;
      case VFIO_KEEPALIVE_LIST_DEVICES:
        if (len >= sizeof(vfio_keepalive_list)) {
          vfio_keepalive_list l{};
          std::memcpy(&l, buf.get(), sizeof l);
          // Bit 0 of the pointer asks for NULL; else a harness array of
          // exactly the declared capacity (a correct kernel writes at most
          // one row per device, far below the cap).
          capacity = std::min<std::size_t>(l.nr_entries, max_list_capacity);
          entries = std::make_unique<vfio_keepalive_device_entry[]>(capacity);
          l.entries_uptr = (l.entries_uptr & 1) ? 0 : reinterpret_cast<std::uintptr_t>(entries.get());
          std::memcpy(buf.get() + offsetof(vfio_keepalive_list, entries_uptr), &l.entries_uptr, sizeof l.entries_uptr);
        }
        break;
      default: break;
    }
    const long rc = do_ioctl(fd, index, buf.get());
    if (rc == 0 && c.cmd == KA_SIM_CREATE_PID && len >= offsetof(ka_sim_pid, out_pid_hpa)) {
      std::memcpy(&last_pid_id_, buf.get() + offsetof(ka_sim_pid, out_pid_id), 4);
    }
    if (c.cmd == VFIO_KEEPALIVE_LIST_DEVICES && len >= sizeof(vfio_keepalive_list) && (rc == 0 || rc == -EOVERFLOW)) {
      vfio_keepalive_list l{};
      std::memcpy(&l, buf.get(), sizeof l);
      if (rc == 0 && l.nr_entries > capacity) finding("LIST_DEVICES: more rows than the capacity given");
      if (rc == -EOVERFLOW && l.nr_entries <= capacity) finding("LIST_DEVICES: EOVERFLOW with room for every row");
      for (std::size_t i = 1; rc == 0 && i < l.nr_entries; ++i)
        if (entries[i - 1].bdf >= entries[i].bdf) finding("LIST_DEVICES: rows not in BDF order");
    }
  }

  long do_ioctl(int fd, std::uint8_t index, void* argp) {
    const auto& c = fuzz::commands[index];
    if (c.cmd == VFIO_KEEPALIVE_RESET_DEVICE && skipped("owned-reset") && !open_devices().empty()) return -EBUSY;
    const long rc = proc_->ioctl(fd, c.cmd, argp);
    if (trace) std::fprintf(stderr, "  %s(fd %d) = %ld\n", c.name, fd, rc);
    check(fd, c, rc);
    if (rc >= 0 && c.cmd == VFIO_DEVICE_KEEPALIVE_GET_IOMMUFD)
      finding("GET_IOMMUFD succeeded: the sim parks devices only through their group (uapi: ENOENT/EBUSY)");
    if (rc >= 0 && c.cmd == VFIO_GROUP_GET_DEVICE_FD) {
      if (fds_.count(static_cast<int>(rc))) finding("GET_DEVICE_FD returned an fd already in use");
      opened(static_cast<int>(rc), node::device);
      const std::string_view name{static_cast<const char*>(argp)};
      if (auto b = bdf::parse(name.substr(0, name.find(' ')))) device_bdf_[static_cast<int>(rc)] = *b;
    }
    if (rc == 0 && c.cmd == VFIO_KEEPALIVE_RESET_DEVICE) {
      vfio_keepalive_reset r{};
      std::memcpy(&r, argp, sizeof r);
      for (auto [dfd, b] : device_bdf_)
        if (b.packed() == r.bdf && kind_of(dfd) == node::device)
          finding("RESET_DEVICE of " + b.to_string() + " succeeded while this VMM holds its fd " + std::to_string(dfd) +
                  " (uapi: EBUSY, device owned)");
    }
    return rc;
  }

  void check(int fd, const fuzz::command& c, long rc) {
    const node kind = kind_of(fd);
    const auto say = [&](const std::string& what) {
      finding(std::string{c.name} + " on fd " + std::to_string(fd) + ": " + what + " (rc " + std::to_string(rc) + ")");
    };
    if (kind == node::none) {
      if (rc != -EBADF) say("fd not open, expected EBADF");
      return;
    }
    if (kind != c.served_by) {
      if (rc != -ENOTTY) say("not served on this kind of fd, expected ENOTTY");
      return;
    }
    if (rc >= 0) {
      const bool returns_value = c.cmd == VFIO_GROUP_GET_DEVICE_FD || c.cmd == VFIO_CHECK_EXTENSION;
      if (!returns_value && rc != 0) say("positive result");
      if (c.cmd == VFIO_CHECK_EXTENSION && rc > 1) say("not 0 or 1");
      return;
    }
    for (int e : c.errnos)
      if (e != 0 && rc == -e) return;
    say("errno outside the documented set");
  }

  harness& h_;
  host& host_;
  std::shared_ptr<process> proc_;
  std::map<int, node> fds_;
  std::map<int, bdf> device_bdf_;  // device fds: which function
  std::array<int, 5> slot_{-1, -1, -1, -1, -1};
  int last_opened_ = -1;
  std::uint32_t last_pid_id_ = 0;
};

harness* the_harness = nullptr;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  the_harness = new harness;  // lives as long as the process: the persistent hosts
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in{data, size};
  const unsigned which = in.u8() & 1u;
  host& hs = the_harness->hosts[which];
  if (++hs.inputs > host_lifetime) hs.rebuild();
  if (trace) std::fprintf(stderr, "== input of %zu bytes on host %u (input %u since its boot)\n", size, which, hs.inputs);
  session s{*the_harness, hs};
  s.run(in);
  return 0;
}
