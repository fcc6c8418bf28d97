// Scenario stage2: stage 1 with a kexec in the middle.
//
// `ka_guest stage2-before` (first kernel): loads the same kernel and initrd
// with kexec_file_load (ka.mode=stage2b), then A owns edu as in stage1 (two
// pages mapped at IOVA 0x100000: the DMA page and a page of notes), starts a
// DMA to RAM with "raise IRQ", enters keepalive and exits. The parent sees the
// device OWNERLESS, runs STAGE2_PREPARE, ABORT, PREPARE (FROZEN; bus mastering on, MSI off,
// INTx disabled so the completion is latched), writes its notes (DID, BAR0,
// TSC at prepare, and edu's MSI message and the IRTE it names, read via IRTA
// from /dev/mem) into the notes page and reboots into the loaded kernel with
// the DMA still in flight (checked just before the reboot).
//
// `ka_guest stage2-after` (second kernel): before anything opens the device,
// the old IOVAs are translated through the context entry this kernel adopted
// (root table from the DMAR unit, /dev/mem) and the data the DMA wrote during
// the reboot is read; the live IR table holds the first kernel's IRTE at the
// same index (patch 0011); edu (through its sysfs BAR, nobody owning it) copies it
// through the preserved tables in both directions. Then the device is listed
// RESTORED with the old DID, a wrong token is EACCES, the token reclaims it
// (RECLAIMED), it was not reset (marker, bus mastering, BAR0 unchanged), the
// latched completion is delivered to the new owner's MSI eventfd, whose MSI
// message is the old one (same IRTE index, entry rewritten for the new IRQ; an
// MSI through it is counted on the new IRQ). Mappings
// (patch 0010): a DMA runs while the owner's container is attached and lands
// in the same page; the container holds the handover's mappings without a
// vaddr, the owner supplies it (MAP_DMA|VADDR, another DMA running meanwhile;
// other pages EINVAL, UNMAP EACCES), never a plain MAP_DMA, and does a DMA
// round trip with an interrupt, then LEAVE (wrong token EACCES) -> RUNNING.
#include <fcntl.h>
#include <linux/reboot.h>
#include <sys/eventfd.h>
#include <sys/klog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <x86intrin.h>

#include <cinttypes>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cctype>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "devmem.hpp"
#include "guest.hpp"
#include "keepalive/abi/ops.hpp"
#include "keepalive/hw/irte.hpp"
#include "keepalive/hw/msi.hpp"
#include "keepalive/hw/page_table.hpp"
#include "keepalive/hw/root_context.hpp"
#include "vfio_edu.hpp"

namespace ka_guest {
namespace {

namespace abi = keepalive::abi;
namespace hw = keepalive::hw;
using keepalive::hpa;

// The report prefix: stage2, or s2x/s2y/s2z for the three kernels of stage2x.
const char* sc = "stage2";
constexpr std::uint64_t dma_iova = 0x100000;
constexpr std::uint64_t notes_iova = dma_iova + 4096;
constexpr std::size_t buffer_bytes = 8192;  // DMA page + notes page
constexpr std::uint32_t half = edu::dma_max;
constexpr std::uint32_t marker = 0x4b41ed02;
constexpr std::uint64_t notes_magic = 0x4b41'5332'4e4f'5445;  // "KAS2NOTE"

// The notes page (second page of the buffer): what the first kernel's test
// leaves for the second; it is mapped for DMA, hence preserved.
struct notes {
  std::uint64_t magic;
  std::uint64_t tsc_prepare;
  std::uint64_t tsc_reboot;
  std::uint32_t did;
  std::uint32_t bar0;
  std::uint32_t dma_running_at_reboot;
  std::uint32_t pad;
  std::uint32_t irte_index;  // edu's MSI handle before PREPARE (no_irte: none)
  std::uint32_t msi_addr_lo;
  std::uint32_t msi_addr_hi;
  std::uint32_t msi_data;
  std::uint64_t irte_lo;  // that IRTE as the first kernel wrote it
  std::uint64_t irte_hi;
};
constexpr std::uint32_t no_irte = ~0u;


// edu's BAR0 through sysfs: usable while nobody owns the device.
class sysfs_bar0 {
 public:
  explicit sysfs_bar0(const std::string& bdf) {
    const int fd = open(("/sys/bus/pci/devices/" + bdf + "/resource0").c_str(), O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0) return;
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) regs_ = static_cast<volatile std::uint32_t*>(p);
  }
  ~sysfs_bar0() {
    if (regs_) munmap(const_cast<std::uint32_t*>(regs_), 4096);
  }
  sysfs_bar0(const sysfs_bar0&) = delete;
  sysfs_bar0& operator=(const sysfs_bar0&) = delete;
  [[nodiscard]] bool ok() const { return regs_ != nullptr; }
  [[nodiscard]] std::uint32_t read(std::uint64_t reg) const { return regs_[reg / 4]; }
  void write(std::uint64_t reg, std::uint32_t v) const { regs_[reg / 4] = v; }
  void start(std::uint64_t iova, std::uint32_t bytes, bool to_ram) const {
    write(edu::reg_dma_src, static_cast<std::uint32_t>(to_ram ? edu::dma_buffer : iova));
    write(edu::reg_dma_dst, static_cast<std::uint32_t>(to_ram ? iova : edu::dma_buffer));
    write(edu::reg_dma_count, bytes);
    write(edu::reg_dma_cmd, edu::dma_cmd_run | (to_ram ? edu::dma_cmd_to_ram : 0u));
  }
  [[nodiscard]] bool running() const { return (read(edu::reg_dma_cmd) & edu::dma_cmd_run) != 0; }
  bool dma(std::uint64_t iova, std::uint32_t bytes, bool to_ram) const {
    start(iova, bytes, to_ram);
    for (int i = 0; i < 400; ++i) {
      if (!(read(edu::reg_dma_cmd) & edu::dma_cmd_run)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

 private:
  volatile std::uint32_t* regs_{nullptr};
};

std::optional<std::uint64_t> dmar_base() {
  std::ifstream in{"/sys/kernel/debug/iommu/intel/iommu_regset"};
  for (std::string l; std::getline(in, l);) {
    std::uint64_t v = 0;
    if (std::sscanf(l.c_str(), "IOMMU: %*s Register Base Address: %" SCNx64, &v) == 1) return v;
  }
  return std::nullopt;
}

// GSTS.TES: the DMAR unit translates.
bool translation_enabled() {
  const auto base = dmar_base();
  const auto gsts = base ? mmio_read64(*base, 0x1c) : std::nullopt;
  return gsts && (*gsts & (1u << 31));
}

// A device's context entry in the root table the DMAR unit uses now (RTADDR).
std::optional<hw::context_entry> live_context(const devmem& mem, keepalive::bdf b) {
  const auto base = dmar_base();
  const auto rtaddr = base ? mmio_read64(*base, hw::rtaddr_register_offset) : std::nullopt;
  if (!mem.ok() || !rtaddr) return std::nullopt;
  const auto re = hw::read_root_entry(mem, hpa{*rtaddr & ~std::uint64_t{0xfff}}, b.bus());
  return hw::read_context_entry(mem, re.context_table(), b.devfn());
}

// edu's MSI capability as the device holds it (sysfs: physical config space).
struct edu_msi {
  hw::msi_message msg;
  bool enabled;
};
std::optional<edu_msi> read_edu_msi(const std::string& bdf) {
  std::uint8_t config[256] = {};
  const int fd = open(("/sys/bus/pci/devices/" + bdf + "/config").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  const ssize_t got = pread(fd, config, sizeof config, 0);
  close(fd);
  if (got != static_cast<ssize_t>(sizeof config)) return std::nullopt;
  const unsigned cap = find_capability(config, sizeof config, pci_cap_id_msi);
  if (!cap) return std::nullopt;
  std::uint16_t control = 0, data = 0;
  std::memcpy(&control, config + cap + 2, 2);
  const bool is64 = control & 0x80;
  edu_msi r{};
  std::memcpy(&r.msg.address_lo, config + cap + 4, 4);
  if (is64) std::memcpy(&r.msg.address_hi, config + cap + 8, 4);
  std::memcpy(&data, config + cap + (is64 ? 12 : 8), 2);
  r.msg.data = data;
  r.enabled = control & 1;
  return r;
}

std::uint32_t irte_index_of(const hw::msi_message& m) {
  const auto r = hw::decode_remappable(m);
  return r ? r->effective_index() : no_irte;
}

// The IR table the DMAR unit uses now (IRTA from its MMIO registers).
std::optional<hw::irta_reg> live_irta() {
  const auto base = dmar_base();
  const auto v = base ? mmio_read64(*base, 0xb8) : std::nullopt;
  if (!v) return std::nullopt;
  return hw::irta_reg::from_raw(*v);
}

hw::irte read_irte(const devmem& mem, const hw::irta_reg& irta, std::uint32_t index) {
  const hpa slot = irta.base() + std::uint64_t{index} * 16;
  return hw::irte::from_words(mem.load64(slot), mem.load64(slot + 8));
}

// Indices of the present IRTEs with source-id sid (whole table, one read).
std::vector<std::uint32_t> irtes_with_sid(const devmem& mem, const hw::irta_reg& irta, std::uint16_t sid) {
  std::vector<std::uint64_t> words(std::size_t{irta.entries()} * 2);
  std::vector<std::uint32_t> out;
  if (!mem.read(irta.base().value(), words.data(), words.size() * 8)) return {no_irte};
  for (std::uint32_t i = 0; i < irta.entries(); ++i) {
    const auto e = hw::irte::from_words(words[2 * i], words[2 * i + 1]);
    if (e.present() && e.sid() == sid) out.push_back(i);
  }
  return out;
}

// The /proc/interrupts count of vfio-pci's MSI vector 0 of bdf.
std::uint64_t vfio_msi_count(const std::string& bdf) {
  std::ifstream in{"/proc/interrupts"};
  for (std::string l; std::getline(in, l);) {
    if (l.find(fmt::format("vfio-msi[0]({})", bdf)) == std::string::npos) continue;
    std::uint64_t total = 0;
    std::istringstream words{l.substr(l.find(':') + 1)};
    for (std::string w; words >> w && std::isdigit(static_cast<unsigned char>(w[0]));) total += std::stoull(w);
    return total;
  }
  return 0;
}

// LUO (include/uapi/linux/liveupdate.h in 7.3; not in the host's headers).
namespace luo {
constexpr unsigned type = 0xBA;
struct session_req {
  std::uint32_t size;
  std::int32_t fd;
  std::uint8_t name[64];
};
struct fd_req {
  std::uint32_t size;
  std::int32_t fd;
  alignas(8) std::uint64_t token;
};
struct finish_req {
  std::uint32_t size;
  std::uint32_t reserved;
};
constexpr unsigned long create_session = _IO(type, 0x00);
constexpr unsigned long retrieve_session = _IO(type, 0x01);
constexpr unsigned long preserve_fd = _IO(type, 0x40);
constexpr unsigned long retrieve_fd = _IO(type, 0x41);
constexpr unsigned long finish = _IO(type, 0x42);
constexpr const char* session_name = "ka-stage2-guest-ram";
constexpr std::uint64_t memfd_token = 1;

// The session fd (>= 0) or -errno.
int open_session(bool retrieve) {
  const int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -errno;
  session_req r{};
  r.size = sizeof r;
  std::strncpy(reinterpret_cast<char*>(r.name), session_name, sizeof r.name - 1);
  const int rc = ioctl(dev, retrieve ? retrieve_session : create_session, &r);
  const int err = errno;
  if (!retrieve) return rc < 0 ? -err : r.fd;  // /dev/liveupdate stays open: the session lives with it
  close(dev);
  return rc < 0 ? -err : r.fd;
}
}  // namespace luo

std::optional<abi::device_entry> listed(int ctl) {
  auto l = abi::list_devices(abi::linux_syscalls(), ctl);
  if (!l || l->size() != 1) return std::nullopt;
  return (*l)[0];
}

// ---------------------------------------------------------------- first kernel
// edu's interrupt as this kernel programmed it (physical config space): MSI
// handle -> IRTE (IRTA, /dev/mem); kept in the notes page.
void record_irte(const edu_location& loc, notes& n) {
  devmem mem;
  const auto edu_sid = keepalive::bdf::parse(loc.bdf)->source_id();
  const auto msi = read_edu_msi(loc.bdf);
  const auto irta = live_irta();
  n.irte_index = msi && msi->enabled ? irte_index_of(msi->msg) : no_irte;
  if (n.irte_index == no_irte || !irta) {
    report(sc, "p_irte_index", "none");
    return;
  }
  const auto e = read_irte(mem, *irta, n.irte_index);
  n.msi_addr_lo = msi->msg.address_lo;
  n.msi_addr_hi = msi->msg.address_hi;
  n.msi_data = msi->msg.data;
  n.irte_lo = e.lo();
  n.irte_hi = e.hi();
  report(sc, "p_irte_index", n.irte_index);
  report(sc, "p_irte", fmt::format("{:016x}{:016x}", e.hi(), e.lo()));
  report(sc, "p_irte_present_sid", e.present() && e.sid() == edu_sid ? 1 : 0);
}

int owner_a(const edu_location& loc, int memfd, const keepalive::token& t) {
  void* p = mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) return fail(sc, "a_mmap");
  auto* buf = static_cast<std::uint8_t*>(p);
  vfio_edu v;
  if (v.open_group(loc) || v.get_device(loc.bdf)) return fail(sc, "a_open");
  if (int rc = v.map_dma(dma_iova, buf, buffer_bytes); rc) return fail(sc, "a_map_dma", rc);
  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail(sc, "a_bus_master");
  v.bar0_write32(edu::reg_liveness, marker);
  fill_pattern(buf, half, 1);
  std::memset(buf + half, 0xee, half);
  if (!v.start_dma(dma_iova, half, false, false) || !v.wait_dma(2000)) return fail(sc, "a_dma_to_device");
  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail(sc, "a_msi", rc);
  const auto enter = abi::keepalive_enter(abi::linux_syscalls(), v.device(), t, {.allow_masking = true});
  report(sc, "a_enter", rc_of(enter));
  if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
    report(sc, "a_domain_id", st->domain.value());
  record_irte(loc, *reinterpret_cast<notes*>(buf + 4096));
  // The DMA that completes during the reboot: started last, ~100 ms to go.
  if (!v.start_dma(dma_iova + half, half, true, true)) return fail(sc, "a_dma_start");
  std::fflush(stdout);
  _exit(0);
}

// A through the cdev and iommufd instead (stage2x K2): the binding is parked,
// and PREPARE freezes it like a group-parked device.
int owner_a_cdev(const edu_location& loc, int memfd, const keepalive::token& t) {
  int ictx = -1;
  std::uint32_t ioas = 0, devid = 0;
  vfio_edu v;
  if (int rc = iommufd_context(memfd, dma_iova, buffer_bytes, ictx, ioas); rc) return fail(sc, "a_context", rc);
  if (int rc = v.open_cdev(loc); rc) return fail(sc, "a_open_cdev", rc);
  if (int rc = v.bind_iommufd(ictx, nullptr, devid); rc) return fail(sc, "a_bind", rc);
  std::uint32_t pt = ioas;
  if (int rc = v.attach_pt(pt); rc) return fail(sc, "a_attach", rc);
  const auto cmd = v.config_read(pci_command, 2);
  if (!cmd || !v.config_write16(pci_command, static_cast<std::uint16_t>(*cmd | pci_command_master)))
    return fail(sc, "a_bus_master");
  const int efd = eventfd(0, EFD_CLOEXEC);
  if (int rc = v.set_msi_trigger(efd); rc) return fail(sc, "a_msi", rc);
  report(sc, "a_enter",
         rc_of(abi::keepalive_enter(abi::linux_syscalls(), v.device(), t, {.allow_masking = true})));
  std::fflush(stdout);
  _exit(0);
}

// This kernel's log is gone after the kexec: count its warnings now.
void report_kernel_health() {
  std::string log(1 << 20, '\0');
  const int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log.data(), static_cast<int>(log.size()));
  log.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  unsigned warnings = 0;
  for (const char* w : {"WARNING:", "BUG:", "Oops", "possible circular locking", "possible recursive locking",
                        "inconsistent lock state", "sleeping function called"})
    for (auto at = log.find(w); at != std::string::npos; at = log.find(w, at + 1)) ++warnings;
  report(sc, "before_kernel_warnings", warnings);
  report(sc, "before_dmar_faults", [&] {
    unsigned c = 0;
    for (auto at = log.find("DMAR: [DMA "); at != std::string::npos; at = log.find("DMAR: [DMA ", at + 1)) ++c;
    return c;
  }());
  std::ifstream ld{"/proc/lockdep_stats"};
  for (std::string l; std::getline(ld, l);)
    if (l.find("debug_locks:") != std::string::npos) report(sc, "before_debug_locks", l.substr(l.find(':') + 1).find('1') != std::string::npos ? 1 : 0);
}

std::string next_cmdline(const char* mode) {
  std::ifstream in{"/proc/cmdline"};
  std::string c;
  std::getline(in, c);
  const auto at = c.find("ka.mode=");
  if (at != std::string::npos) c.erase(at, c.find(' ', at) == std::string::npos ? std::string::npos : c.find(' ', at) - at + 1);
  return c + " ka.mode=" + mode;
}

int before() {
  const auto loc = find_edu();
  if (!loc) return fail(sc, "find_edu");
  auto& sys = abi::linux_syscalls();

  // Load the next kernel first: kexec_file_load hashes the segments (slow under TCG).
  const std::string cmdline = next_cmdline("stage2b");
  const int kfd = open("/boot/bzImage", O_RDONLY | O_CLOEXEC);
  const int ifd = open("/boot/initrd.gz", O_RDONLY | O_CLOEXEC);
  const long loaded = syscall(SYS_kexec_file_load, kfd, ifd, cmdline.size() + 1, cmdline.c_str(), 0ul);
  report(sc, "kexec_load", loaded == 0 ? 0 : -errno);
  if (loaded != 0) return 1;

  const int memfd = memfd_create("ka-s2", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, buffer_bytes) < 0) return fail(sc, "memfd");
  void* p = mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) return fail(sc, "mmap");
  auto* buf = static_cast<std::uint8_t*>(p);
  std::memset(buf, 0, buffer_bytes);
  auto* n = reinterpret_cast<notes*>(buf + 4096);

  const keepalive::token token = make_token(0x21);
  run_child(sc, "a", [&] { return owner_a(*loc, memfd, token); });

  // The VMM's RAM goes through LUO (memfd_luo): same pages after the kexec.
  const int session = luo::open_session(false);
  luo::fd_req pr{sizeof(luo::fd_req), memfd, luo::memfd_token};
  report(sc, "luo_preserve", session < 0 ? session : ioctl(session, luo::preserve_fd, &pr) < 0 ? -errno : 0);

  devmem mem;
  const auto irta = live_irta();
  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail(sc, "ctl_open", rc_of(ctl));
  const auto row = listed(*ctl);
  report(sc, "p_state", row ? static_cast<unsigned>(row->state) : 0u);
  report(sc, "p_domain_id", row ? row->domain.value() : 0u);
  if (const auto info = abi::get_info(sys, *ctl)) {
    report(sc, "p_caps", hex(info->caps));
    report(sc, "p_generation", info->generation);
  }

  const auto prep = abi::stage2_prepare(sys, *ctl);
  n->tsc_prepare = __rdtsc();
  report(sc, "prepare", rc_of(prep));
  if (prep) {
    report(sc, "prepare_nr_devices", prep->nr_devices);
    report(sc, "prepare_image_bytes", prep->image_bytes);
  }
  report(sc, "prepare_again", rc_of(abi::stage2_prepare(sys, *ctl)));
  // ABORT thaws it (image and preserved pages dropped); PREPARE again.
  const auto abort = abi::stage2_abort(sys, *ctl);
  report(sc, "abort", rc_of(abort));
  report(sc, "abort_nr_devices", abort ? abort->nr_devices : 0u);
  const auto thawed = listed(*ctl);
  report(sc, "p_thawed_state", thawed ? static_cast<unsigned>(thawed->state) : 0u);
  report(sc, "abort_again", rc_of(abi::stage2_abort(sys, *ctl)));
  const auto prep2 = abi::stage2_prepare(sys, *ctl);
  n->tsc_prepare = __rdtsc();
  report(sc, "prepare2", rc_of(prep2));
  const auto frozen = listed(*ctl);
  report(sc, "p_frozen_state", frozen ? static_cast<unsigned>(frozen->state) : 0u);
  const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
  report(sc, "p_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  report(sc, "p_intx_disabled", cmd && (*cmd & 0x400) ? 1 : 0);
  // Vectors released, the IRTE held at its index (PREPARE, ABORT, PREPARE).
  if (const auto m = read_edu_msi(loc->bdf)) report(sc, "p_msi_disabled", m->enabled ? 0 : 1);
  if (n->irte_index != no_irte && irta) {
    const auto e = read_irte(mem, *irta, n->irte_index);
    report(sc, "p_irte_held", e.present() && e.lo() == n->irte_lo && e.hi() == n->irte_hi ? 1 : 0);
  }

  n->magic = notes_magic;
  n->did = row ? row->domain.value() : 0;
  n->bar0 = sysfs_config_read(loc->bdf, 0x10, 4).value_or(0);
  report(sc, "p_bar0", hex(n->bar0));
  report_kernel_health();
  sysfs_bar0 bar{loc->bdf};
  const bool running = bar.ok() && (bar.read(edu::reg_dma_cmd) & edu::dma_cmd_run);
  n->dma_running_at_reboot = running ? 1 : 0;
  report(sc, "p_dma_running_at_reboot", n->dma_running_at_reboot);
  report(sc, "p_dma_landed_before_reboot", holds_pattern(buf + half, half, 1) ? 1 : 0);
  report(sc, "kexec", "now");
  std::fflush(stdout);
  n->tsc_reboot = __rdtsc();
  syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, nullptr);
  return fail(sc, "reboot", -errno);
}

// ---------------------------------------------------------------- second kernel
std::uint64_t tsc_per_ms() {
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t c0 = __rdtsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::uint64_t c1 = __rdtsc();
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  return us > 0 ? (c1 - c0) * 1000 / static_cast<std::uint64_t>(us) : 0;
}

int after() {
  const std::uint64_t tsc_start = __rdtsc();
  const auto loc = find_edu();
  if (!loc) return fail(sc, "find_edu");
  auto& sys = abi::linux_syscalls();
  report(sc, "after_kernel", 1);
  const auto bdf = *keepalive::bdf::parse(loc->bdf);

  // The adopted translation, before anybody opens the device: the root table
  // the DMAR unit uses now, edu's (copied) context entry, the old tables.
  devmem mem;
  const auto copied = live_context(mem, bdf);
  if (!copied) return fail(sc, "dmar");
  const hw::context_entry& ce = *copied;
  report(sc, "b_translation_enabled", translation_enabled() ? 1 : 0);
  report(sc, "b_context_present", ce.present() ? 1 : 0);
  report(sc, "b_context_did", ce.domain_id().value());
  const auto dma = hw::translate(mem, ce.slptptr(), ce.levels(), keepalive::iova{dma_iova}, hw::dma_access::write);
  const auto nt = hw::translate(mem, ce.slptptr(), ce.levels(), keepalive::iova{notes_iova}, hw::dma_access::write);
  if (!ce.present() || !dma || !nt) return fail(sc, "translate");
  const std::uint64_t dma_phys = dma->address.value(), notes_phys = nt->address.value();
  report(sc, "b_dma_phys", hex(dma_phys));
  notes n{};
  std::uint8_t page[4096] = {};
  if (!mem.read(notes_phys, &n, sizeof n) || !mem.read(dma_phys, page, sizeof page)) return fail(sc, "devmem_read");
  report(sc, "b_notes", n.magic == notes_magic ? 1 : 0);
  report(sc, "b_did_kept", n.did != 0 && ce.domain_id().value() == n.did ? 1 : 0);
  report(sc, "b_dma_running_at_reboot", n.dma_running_at_reboot);
  report(sc, "b_dma_landed", holds_pattern(page + half, half, 1) ? 1 : 0);
  const auto pstatus = sysfs_config_read(loc->bdf, 0x06, 2);
  report(sc, "b_intx_latched", pstatus && (*pstatus & 0x8) ? 1 : 0);

  // The IRTE adopted by this kernel's IR init, before anybody opens edu: the
  // live table (IRTA) holds the first kernel's entry at the same index, and
  // it is edu's only entry; edu's MSI is off (the entry is unreachable).
  const auto irta = live_irta();
  const auto edu_sid = bdf.source_id();
  if (!irta || n.irte_index == no_irte) return fail(sc, "irte_notes");
  report(sc, "b_irte_index", n.irte_index);
  {
    const auto e = read_irte(mem, *irta, n.irte_index);
    report(sc, "b_irte_adopted_present", e.present() ? 1 : 0);
    report(sc, "b_irte_adopted_sid", e.sid() == edu_sid ? 1 : 0);
    report(sc, "b_irte_adopted_same", e.lo() == n.irte_lo && e.hi() == n.irte_hi ? 1 : 0);
    const auto all = irtes_with_sid(mem, *irta, edu_sid);
    report(sc, "b_irtes_for_edu", all.size());
    const auto m = read_edu_msi(loc->bdf);
    report(sc, "b_msi_off_before_open", m && !m->enabled ? 1 : 0);
  }

  // The device still DMAs through the preserved tables (sysfs BAR, no owner):
  // the landed data back into edu, then out to the notes page.
  {
    sysfs_bar0 bar{loc->bdf};
    const bool ok = bar.ok() && bar.dma(dma_iova + half, half, false) && bar.dma(notes_iova + 2048, half, true);
    std::uint8_t copy[half] = {};
    report(sc, "b_preserved_tables_dma",
           ok && mem.read(notes_phys + 2048, copy, sizeof copy) && holds_pattern(copy, half, 1) ? 1 : 0);
  }

  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail(sc, "ctl_open", rc_of(ctl));
  const auto row = listed(*ctl);
  report(sc, "b_listed_state", row ? static_cast<unsigned>(row->state) : 0u);
  if (const auto info = abi::get_info(sys, *ctl)) report(sc, "b_generation", info->generation);

  const keepalive::token token = make_token(0x21);
  keepalive::token::bytes wrong_bytes = token.raw();
  wrong_bytes[0] ^= 0x80;
  // The cdev is no way back for a RESTORED device (no iommufd context
  // survived): GET_IOMMUFD is ENOENT, a bind with the token EOPNOTSUPP, and
  // its DMA keeps the copied context entry.
  {
    vfio_edu c;
    if (c.open_cdev(*loc) == 0) {
      report(sc, "b_cdev_get_iommufd", rc_of(abi::keepalive_get_iommufd(sys, c.device(), token)));
      const int ictx = open("/dev/iommu", O_RDWR | O_CLOEXEC);
      std::uint32_t devid = 0;
      report(sc, "b_cdev_bind_with_token", ictx < 0 ? -errno : c.bind_iommufd(ictx, token.raw().data(), devid));
      if (ictx >= 0) close(ictx);
    }
  }
  if (const auto ce1 = live_context(mem, bdf))
    report(sc, "b_cdev_context_unchanged",
           ce1->present() && ce1->slptptr() == ce.slptptr() && ce1->domain_id() == ce.domain_id() ? 1 : 0);
  // A DMA in flight while the new owner's container is attached: its first
  // domain adopts the preserved tables and DID before the attach, so the DMA
  // lands in the same page (edu's buffer still holds pattern 1).
  sysfs_bar0 bar{loc->bdf};
  const std::vector<std::uint8_t> zeros(half, 0);
  if (!bar.ok() || !mem.write(dma_phys, zeros.data(), half))
    return fail(sc, "b_attach_dma_setup");
  bar.start(dma_iova, half, true);
  vfio_edu v;
  if (int rc = v.open_group(*loc); rc) return fail(sc, "b_open_group", rc);
  report(sc, "b_dma_running_at_attach", bar.running() ? 1 : 0);
  for (int i = 0; i < 400 && bar.running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  {
    std::uint8_t got[half] = {};
    report(sc, "b_attach_dma_landed", !bar.running() && mem.read(dma_phys, got, half) && holds_pattern(got, half, 1) ? 1 : 0);
  }
  // The attached domain is the preserved one: edu's context entry (no longer
  // a copy) names the same table root and the same DID as before the kexec.
  if (const auto ce2 = live_context(mem, bdf)) {
    report(sc, "b_attach_context_present", ce2->present() ? 1 : 0);
    report(sc, "b_attach_did_kept", n.did != 0 && ce2->domain_id().value() == n.did ? 1 : 0);
    report(sc, "b_attach_root_kept", ce2->slptptr() == ce.slptptr() && ce2->levels() == ce.levels() ? 1 : 0);
  }
  report(sc, "b_open_no_token", v.get_device(loc->bdf));
  report(sc, "b_open_wrong_token", v.get_device(abi::reclaim_name(bdf, keepalive::token{wrong_bytes})));
  const int rc = v.get_device(abi::reclaim_name(bdf, token));
  report(sc, "b_open_with_token", rc);
  if (rc) return 1;
  if (const auto st = abi::keepalive_status(sys, v.device())) {
    report(sc, "b_state", static_cast<unsigned>(st->state));
    report(sc, "b_domain_kept", st->domain.value() == n.did ? 1 : 0);
  }

  const auto live = v.bar0_read32(edu::reg_liveness);
  report(sc, "b_marker_kept", live == ~marker ? 1 : 0);
  const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
  report(sc, "b_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  report(sc, "b_bar0_kept", sysfs_config_read(loc->bdf, 0x10, 4).value_or(0) == n.bar0 ? 1 : 0);
  const auto irq_status = v.bar0_read32(edu::reg_irq_status);
  report(sc, "b_edu_irq_status", hex(irq_status.value_or(0)));

  // The completion latched during the reboot reaches the new owner's eventfd.
  const int efd = eventfd(0, EFD_CLOEXEC);
  report(sc, "b_set_msi", v.set_msi_trigger(efd));
  const auto got = wait_eventfd(efd, 1000);
  const std::uint64_t tsc_irq = __rdtsc();
  report(sc, "b_irq_delivered", got ? 1 : 0);
  v.bar0_write32(edu::reg_irq_ack, edu::irq_dma);
  // SET_IRQS took the adopted index again: same handle, same message; the
  // entry keeps edu's SID and is rewritten with this kernel's vector and
  // destination (checked against debugfs, and by an MSI through it below).
  if (const auto m = read_edu_msi(loc->bdf)) {
    report(sc, "b_msi_enabled", m->enabled ? 1 : 0);
    report(sc, "b_msi_same_message",
           m->msg.address_lo == n.msi_addr_lo && m->msg.address_hi == n.msi_addr_hi && m->msg.data == n.msi_data
               ? 1
               : 0);
    report(sc, "b_msi_irte_index", irte_index_of(m->msg));
  }
  {
    const auto e = read_irte(mem, *irta, n.irte_index);
    report(sc, "b_irte_reconnected_sid", e.present() && e.sid() == edu_sid ? 1 : 0);
    report(sc, "b_irte_vector", e.vector().value());
    report(sc, "b_irte_vector_was", hw::irte::from_words(n.irte_lo, n.irte_hi).vector().value());
    unsigned dbg = 0;
    std::ifstream in{"/sys/kernel/debug/iommu/intel/ir_translation_struct"};
    for (std::string l; std::getline(in, l);) {
      unsigned idx = 0, b = 0, d = 0, f = 0, dst = 0, vec = 0;
      if (std::sscanf(l.c_str(), " %u %x:%x.%x %x %x", &idx, &b, &d, &f, &dst, &vec) == 6 && idx == n.irte_index)
        dbg = vec == e.vector().value() && dst == e.dst() && ((b << 8) | (d << 3) | f) == edu_sid ? 1 : 2;
    }
    report(sc, "b_irte_debugfs_matches", dbg == 1 ? 1 : 0);
    report(sc, "b_irtes_for_edu_after", irtes_with_sid(mem, *irta, edu_sid).size());
  }
  const std::uint64_t msi_count_before = vfio_msi_count(loc->bdf);
  const std::uint64_t per_ms = tsc_per_ms();
  if (per_ms && n.magic == notes_magic) {
    report(sc, "freeze_to_irq_ms", (tsc_irq - n.tsc_prepare) / per_ms);
    report(sc, "reboot_to_userspace_ms", (tsc_start - n.tsc_reboot) / per_ms);
  }

  // The new owner's container holds the handover's mappings without a vaddr:
  // it gets the guest RAM memfd back from LUO (the same physical pages) and
  // supplies the vaddr (VFIO_DMA_MAP_FLAG_VADDR); no MAP_DMA of guest memory.
  const int session = luo::open_session(true);
  luo::fd_req rr{sizeof(luo::fd_req), -1, luo::memfd_token};
  const int got_fd = session < 0 ? session : ioctl(session, luo::retrieve_fd, &rr) < 0 ? -errno : 0;
  report(sc, "b_luo_retrieve", got_fd);
  void* p = got_fd == 0 ? mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rr.fd, 0) : MAP_FAILED;
  if (p != MAP_FAILED) {
    (void)*static_cast<volatile std::uint8_t*>(p);  // fault the page in for pagemap
    const auto phys = virt_to_phys(p);
    report(sc, "b_memfd_phys", hex(phys.value_or(0)));
    report(sc, "b_memfd_same_phys", phys && *phys == dma_phys ? 1 : 0);
  }
  report(sc, "b_unmap_adopted", v.unmap_dma(dma_iova, buffer_bytes, 0));
  {
    void* other = mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (other != MAP_FAILED) std::memset(other, 1, buffer_bytes);
    report(sc, "b_map_vaddr_other_pages",
           other == MAP_FAILED ? -errno : v.map_dma(dma_iova, other, buffer_bytes, VFIO_DMA_MAP_FLAG_VADDR));
    if (other != MAP_FAILED) munmap(other, buffer_bytes);
  }
  // A DMA in flight while the owner takes the mappings over (edu's buffer: pattern 1).
  bool takeover_dma_started = false;
  if (p != MAP_FAILED) {
    std::memset(static_cast<std::uint8_t*>(p) + 4096 + 2048, 0, half);
    takeover_dma_started = v.start_dma(notes_iova + 2048, half, true, false);
  }
  report(sc, "b_map_vaddr", p == MAP_FAILED ? -errno : v.map_dma(dma_iova, p, buffer_bytes, VFIO_DMA_MAP_FLAG_VADDR));
  if (p != MAP_FAILED) {
    report(sc, "b_dma_running_at_takeover", takeover_dma_started && v.bar0_read32(edu::reg_dma_cmd).value_or(0) & edu::dma_cmd_run ? 1 : 0);
    report(sc, "b_takeover_dma_landed",
           v.wait_dma(2000) && holds_pattern(static_cast<std::uint8_t*>(p) + 4096 + 2048, half, 1) ? 1 : 0);
  }
  if (p != MAP_FAILED) {
    auto* buf = static_cast<std::uint8_t*>(p);
    report(sc, "b_buffer_holds_dma", holds_pattern(buf + half, half, 1) ? 1 : 0);
    fill_pattern(buf, half, 2);
    std::memset(buf + half, 0, half);
    const bool roundtrip = v.start_dma(dma_iova, half, false, false) && v.wait_dma(2000) &&
                           v.start_dma(dma_iova + half, half, true, true) && v.wait_dma(2000) &&
                           holds_pattern(buf + half, half, 2);
    report(sc, "b_roundtrip", roundtrip ? 1 : 0);
    report(sc, "b_roundtrip_irq", wait_eventfd(efd, 1000) ? 1 : 0);
    report(sc, "b_msi_counted", vfio_msi_count(loc->bdf) > msi_count_before ? 1 : 0);
  }
  if (const auto st = abi::keepalive_status(sys, v.device())) report(sc, "b_dma_faults", st->dma_faults);
  report(sc, "b_leave_wrong_token",
         rc_of(abi::keepalive_leave(sys, v.device(), keepalive::token{wrong_bytes})));
  report(sc, "b_leave", rc_of(abi::keepalive_leave(sys, v.device(), token)));
  if (const auto st = abi::keepalive_status(sys, v.device()))
    report(sc, "b_state_after_leave", static_cast<unsigned>(st->state));
  if (auto l = abi::list_devices(sys, *ctl)) report(sc, "b_listed_after", l->size());
  sys.close(*ctl);
  luo::finish_req fin{sizeof(luo::finish_req), 0};
  report(sc, "b_luo_finish", session < 0 ? session : ioctl(session, luo::finish, &fin) < 0 ? -errno : 0);
  report(sc, "done", 1);
  return 0;
}

// ------------------------------------------------- stage2x: three kernels
// K1 (s2x): A kept alive; PREPARE, ABORT; B reclaims the thawed device with
//   the token and exits; PREPARE again; the image is corrupted through the
//   test-only debugfs knob; kexec.
// K2 (s2y): the image is refused: HANDOVER_REJECTED (EPROTO), nothing
//   restored (generation 0, nothing listed), translation still on, no IRTE
//   with edu's SID adopted, Bus Master off, the token is ENOENT, the device
//   opens as an ordinary one. Then A2 keeps it alive again through the cdev
//   (its iommufd binding parked), PREPARE (valid), kexec.
// K3 (s2z): RESTORED with its IRTE adopted; a group opened with the fallback
//   knob rebuilds its mappings (new DID and root, same page); RESET_DEVICE without any open
//   releases it (EVENT_RESET, Bus Master off, not listed, the IRTE freed), the
//   token is ENOENT, a plain open works.
int load_next(const char* initrd, const char* mode) {
  const std::string cmdline = next_cmdline(mode);
  const int kfd = open("/boot/bzImage", O_RDONLY | O_CLOEXEC);
  const int ifd = open(initrd, O_RDONLY | O_CLOEXEC);
  const long loaded = syscall(SYS_kexec_file_load, kfd, ifd, cmdline.size() + 1, cmdline.c_str(), 0ul);
  const int rc = loaded == 0 ? 0 : -errno;
  report(sc, "kexec_load", rc);
  return rc;
}

[[noreturn]] void kexec_now() {
  report(sc, "kexec", "now");
  std::fflush(stdout);
  syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, nullptr);
  _exit(fail(sc, "reboot", -errno));
}

// Forks A (owner_a, or owner_a_cdev, with a fresh two-page memfd) and waits for its exit.
int keep_alive_a(const edu_location& loc, const keepalive::token& t, bool cdev = false) {
  const int memfd = memfd_create("ka-s2x", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, buffer_bytes) < 0) return fail(sc, "memfd");
  run_child(sc, "a", [&] { return cdev ? owner_a_cdev(loc, memfd, t) : owner_a(loc, memfd, t); });
  return 0;
}

// A child that opens the device with the token (must be ENOENT: an ordinary
// device) and then plainly; reports <prefix>_open_with_token/_open_plain/_state.
void open_as_ordinary(const edu_location& loc, const keepalive::token& t, const char* prefix) {
  std::fflush(stdout);
  const pid_t c = fork();
  if (c == 0) {
    vfio_edu v;
    if (int rc = v.open_group(loc); rc) _exit(fail(sc, fmt::format("{}_open_group", prefix), rc));
    const auto b = *keepalive::bdf::parse(loc.bdf);
    report(sc, fmt::format("{}_open_with_token", prefix), v.get_device(abi::reclaim_name(b, t)));
    report(sc, fmt::format("{}_open_plain", prefix), v.get_device(loc.bdf));
    if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
      report(sc, fmt::format("{}_state", prefix), static_cast<unsigned>(st->state));
    std::fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(c, &st, 0);
}

int corrupt(const char* how) {
  const int fd = open("/sys/kernel/debug/vfio-keepalive/corrupt_handover", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  const ssize_t n = write(fd, how, std::strlen(how));
  const int rc = n < 0 ? -errno : 0;
  close(fd);
  return rc;
}

int s2x_first() {
  sc = "s2x";
  const auto loc = find_edu();
  if (!loc) return fail(sc, "find_edu");
  auto& sys = abi::linux_syscalls();
  if (load_next("/boot/initrd-s2.gz", "stage2y")) return 1;
  const keepalive::token token = make_token(0x31);
  keep_alive_a(*loc, token);
  auto ctl = sys.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail(sc, "ctl_open", rc_of(ctl));
  report(sc, "corrupt_unprepared", corrupt("byte"));
  report(sc, "prepare", rc_of(abi::stage2_prepare(sys, *ctl)));
  if (const auto row = listed(*ctl)) report(sc, "p_frozen_state", static_cast<unsigned>(row->state));
  report(sc, "abort", rc_of(abi::stage2_abort(sys, *ctl)));
  if (const auto row = listed(*ctl)) report(sc, "p_thawed_state", static_cast<unsigned>(row->state));

  // The device that was FROZEN, thawed by ABORT, is reclaimed with its token.
  std::fflush(stdout);
  const pid_t b = fork();
  if (b == 0) {
    vfio_edu v;
    if (int rc = v.open_group(*loc); rc) _exit(fail(sc, "r_open_group", rc));
    keepalive::token::bytes wrong = token.raw();
    wrong[3] ^= 0x01;
    const auto bdf = *keepalive::bdf::parse(loc->bdf);
    report(sc, "r_open_wrong_token", v.get_device(abi::reclaim_name(bdf, keepalive::token{wrong})));
    const int rc = v.get_device(abi::reclaim_name(bdf, token));
    report(sc, "r_open_with_token", rc);
    if (rc) _exit(1);
    if (const auto st = abi::keepalive_status(abi::linux_syscalls(), v.device()))
      report(sc, "r_state", static_cast<unsigned>(st->state));
    report(sc, "r_marker_kept", v.bar0_read32(edu::reg_liveness) == ~marker ? 1 : 0);
    const auto cmd = sysfs_config_read(loc->bdf, pci_command, 2);
    report(sc, "r_bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
    std::fflush(stdout);
    _exit(0);  // no LEAVE: ownerless again, reclaimable with the same token
  }
  int st = 0;
  waitpid(b, &st, 0);
  report(sc, "r_exit", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  if (const auto row = listed(*ctl)) report(sc, "r_state_after_exit", static_cast<unsigned>(row->state));

  const auto prep2 = abi::stage2_prepare(sys, *ctl);
  report(sc, "prepare2", rc_of(prep2));
  report(sc, "prepare2_nr_devices", prep2 ? prep2->nr_devices : 0u);
  report(sc, "corrupt_bogus", corrupt("bogus"));
  report(sc, "corrupt_byte", corrupt("byte"));
  report_kernel_health();
  kexec_now();
}

// The start of a kernel of stage2x after a kexec: edu, its BDF, the control node.
struct kexec_start {
  edu_location loc;
  keepalive::bdf bdf;
  int ctl;
};
std::optional<kexec_start> start_after_kexec(const char* scenario) {
  sc = scenario;
  report(sc, "after_kernel", 1);
  const auto loc = find_edu();
  if (!loc) return fail(sc, "find_edu"), std::nullopt;
  auto ctl = abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return fail(sc, "ctl_open", rc_of(ctl)), std::nullopt;
  return kexec_start{*loc, *keepalive::bdf::parse(loc->bdf), *ctl};
}

int s2y_refused() {
  const auto k = start_after_kexec("s2y");
  if (!k) return 1;
  const edu_location& loc = k->loc;
  const keepalive::bdf bdf = k->bdf;
  const int ctl = k->ctl;
  auto& sys = abi::linux_syscalls();
  int image_event = 0, device_event = 0, err = 0;
  while (auto e = abi::read_event(sys, ctl)) {
    if (e->type != VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED) continue;
    if (e->device == bdf) device_event = 1;
    else if (e->device.packed() == 0) image_event = 1;
    err = e->error_number;
  }
  report(sc, "event_rejected_image", image_event);
  report(sc, "event_rejected_device", device_event);
  report(sc, "event_errno", err);
  // The refused image carried an IRTE for edu: none was adopted.
  {
    devmem mem;
    const auto irta = live_irta();
    report(sc, "irtes_for_edu", irta ? irtes_with_sid(mem, *irta, bdf.source_id()).size() : 99u);
  }
  if (const auto info = abi::get_info(sys, ctl)) report(sc, "generation", info->generation);
  if (auto l = abi::list_devices(sys, ctl)) report(sc, "listed", l->size());
  report(sc, "translation_enabled", translation_enabled() ? 1 : 0);
  const auto cmd = sysfs_config_read(loc.bdf, pci_command, 2);
  report(sc, "bus_master", cmd && (*cmd & pci_command_master) ? 1 : 0);
  open_as_ordinary(loc, make_token(0x31), "c");

  // Kept alive again, through the cdev this time (its iommufd binding parked),
  // a valid handover, for K3.
  if (load_next("/boot/initrd.gz", "stage2z")) return 1;
  keep_alive_a(loc, make_token(0x41), true);
  if (const auto row = listed(ctl)) report(sc, "p_state", static_cast<unsigned>(row->state));
  {
    vfio_edu c;
    const auto ictx = c.open_cdev(loc) == 0 ? abi::keepalive_get_iommufd(sys, c.device(), make_token(0x41))
                                             : keepalive::result<int>{keepalive::errc::io, "open_cdev"};
    report(sc, "p_iommufd_parked", ictx ? 1 : 0);
    if (ictx) close(*ictx);
  }
  const auto prep = abi::stage2_prepare(sys, ctl);
  report(sc, "prepare", rc_of(prep));
  report(sc, "prepare_nr_devices", prep ? prep->nr_devices : 0u);
  report_kernel_health();
  kexec_now();
}

int s2z_reset() {
  const auto k = start_after_kexec("s2z");
  if (!k) return 1;
  const edu_location& loc = k->loc;
  const keepalive::bdf bdf = k->bdf;
  const int ctl = k->ctl;
  auto& sys = abi::linux_syscalls();
  while (abi::read_event(sys, ctl)) {
  }
  if (const auto row = listed(ctl)) report(sc, "listed_state", static_cast<unsigned>(row->state));
  if (const auto info = abi::get_info(sys, ctl)) report(sc, "generation", info->generation);
  const auto before = sysfs_config_read(loc.bdf, pci_command, 2);
  report(sc, "bus_master_before", before && (*before & pci_command_master) ? 1 : 0);
  devmem mem;
  // The fallback (test-only knob): the first domain of a group opened now is
  // filled with the handover's translations (new root and DID, same pages)
  // instead of adopting the preserved tables; the group is closed again, its
  // container parked for the RESTORED device.
  {
    const char* knob = "/sys/module/vfio_iommu_type1/parameters/keepalive_in_place";
    const auto ce0 = live_context(mem, bdf);
    report(sc, "f_knob", write_sysfs(knob, "N") ? 1 : 0);
    run_child(sc, "f", [&] {
      vfio_edu v;
      if (int rc = v.open_group(loc); rc) return fail(sc, "f_open_group", rc);
      const auto ce1 = live_context(mem, bdf);
      if (!ce0 || !ce1 || !ce0->present() || !ce1->present()) return fail(sc, "f_context");
      report(sc, "f_new_did", ce1->domain_id() != ce0->domain_id() ? 1 : 0);
      report(sc, "f_new_root", ce1->slptptr() != ce0->slptptr() ? 1 : 0);
      const auto was = hw::translate(mem, ce0->slptptr(), ce0->levels(), keepalive::iova{dma_iova}, hw::dma_access::write);
      const auto now = hw::translate(mem, ce1->slptptr(), ce1->levels(), keepalive::iova{dma_iova}, hw::dma_access::write);
      report(sc, "f_same_page", was && now && was->address == now->address ? 1 : 0);
      return 0;
    });
    write_sysfs(knob, "Y");
    if (const auto row = listed(ctl)) report(sc, "f_state_after", static_cast<unsigned>(row->state));
  }
  // The adopted IRTE (A2's vector in K2) is held until the reset releases it.
  const auto irta = live_irta();
  report(sc, "irtes_for_edu_before", irta ? irtes_with_sid(mem, *irta, bdf.source_id()).size() : 99u);
  report(sc, "reset", rc_of(abi::reset_device(sys, ctl, bdf)));
  report(sc, "irtes_for_edu_after", irta ? irtes_with_sid(mem, *irta, bdf.source_id()).size() : 99u);
  report(sc, "reset_again", rc_of(abi::reset_device(sys, ctl, bdf)));
  if (auto l = abi::list_devices(sys, ctl)) report(sc, "listed_after", l->size());
  int reset_event = 0;
  while (auto e = abi::read_event(sys, ctl))
    if (e->type == VFIO_KEEPALIVE_EVENT_RESET && e->device == bdf) reset_event = 1;
  report(sc, "event_reset", reset_event);
  const auto cmd = sysfs_config_read(loc.bdf, pci_command, 2);
  report(sc, "bus_master_after", cmd && (*cmd & pci_command_master) ? 1 : 0);
  open_as_ordinary(loc, make_token(0x41), "c");
  report(sc, "done", 1);
  return 0;
}

}  // namespace

int run_stage2(bool after_kexec) { return after_kexec ? after() : before(); }
int run_stage2x(int kernel) { return kernel == 1 ? s2x_first() : kernel == 2 ? s2y_refused() : s2z_reset(); }

}  // namespace ka_guest
