#include "vfio_edu.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "guest.hpp"

namespace ka_guest {
namespace {

int neg_errno() { return -errno; }

std::optional<unsigned long> read_hex_file(const std::string& path) {
  std::ifstream in{path};
  std::string s;
  if (!(in >> s)) return std::nullopt;
  return std::stoul(s, nullptr, 16);
}

}  // namespace

std::optional<edu_location> find_edu() {
  DIR* d = opendir("/sys/bus/pci/devices");
  if (!d) return std::nullopt;
  std::optional<edu_location> found;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.front() == '.') continue;
    const std::string base = "/sys/bus/pci/devices/" + name;
    if (read_hex_file(base + "/vendor") != edu::vendor_id || read_hex_file(base + "/device") != edu::device_id)
      continue;
    char link[256] = {};
    const ssize_t n = readlink((base + "/iommu_group").c_str(), link, sizeof link - 1);
    if (n <= 0) continue;
    const std::string target{link, static_cast<std::size_t>(n)};
    found = edu_location{name, std::stoi(target.substr(target.rfind('/') + 1))};
  }
  closedir(d);
  return found;
}

std::optional<std::uint32_t> sysfs_config_read(const std::string& bdf, unsigned offset, unsigned size) {
  const int fd = open(("/sys/bus/pci/devices/" + bdf + "/config").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::uint32_t v = 0;
  const ssize_t n = pread(fd, &v, size, offset);
  close(fd);
  if (n != static_cast<ssize_t>(size)) return std::nullopt;
  return v;
}

unsigned find_capability(const std::uint8_t* config, std::size_t size, std::uint8_t id) {
  unsigned pos = config[pci_cap_ptr] & 0xfcu;
  for (int guard = 0; pos && pos + 1 < size && guard < 48; ++guard) {
    if (config[pos] == id) return pos;
    pos = config[pos + 1] & 0xfcu;
  }
  return 0;
}

vfio_edu::~vfio_edu() {
  for (int fd : {device_, group_, container_})
    if (fd >= 0) close(fd);
}

int vfio_edu::open_group(const edu_location& loc) {
  container_ = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  if (container_ < 0) return neg_errno();
  group_ = open(("/dev/vfio/" + std::to_string(loc.group)).c_str(), O_RDWR | O_CLOEXEC);
  if (group_ < 0) return neg_errno();
  vfio_group_status st{};
  st.argsz = sizeof st;
  if (ioctl(group_, VFIO_GROUP_GET_STATUS, &st) < 0) return neg_errno();
  if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) return -EINVAL;
  if (ioctl(group_, VFIO_GROUP_SET_CONTAINER, &container_) < 0) return neg_errno();
  if (ioctl(container_, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) return neg_errno();
  return 0;
}

int vfio_edu::get_device(const std::string& name) {
  const int fd = ioctl(group_, VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  if (fd < 0) return neg_errno();
  device_ = fd;
  return load_regions();
}

namespace {
// Linux 7.3's include/uapi/linux/vfio.h (Debian 12's headers predate the cdev).
struct vfio_device_bind_iommufd_73 {
  __u32 argsz;
  __u32 flags;
  __s32 iommufd;
  __u32 out_devid;
  __aligned_u64 token_uuid_ptr;
};
constexpr std::uint32_t bind_flag_token = 1u << 0;
constexpr unsigned long vfio_device_bind_iommufd = _IO(VFIO_TYPE, VFIO_BASE + 18);
struct vfio_device_attach_iommufd_pt_73 {
  __u32 argsz;
  __u32 flags;
  __u32 pt_id;
  __u32 pasid;
};
constexpr unsigned long vfio_device_attach_iommufd_pt = _IO(VFIO_TYPE, VFIO_BASE + 19);
}  // namespace

int vfio_edu::open_cdev(const edu_location& loc) {
  const std::string dir = "/sys/bus/pci/devices/" + loc.bdf + "/vfio-dev";
  DIR* d = opendir(dir.c_str());
  if (!d) return neg_errno();
  std::string node;
  while (dirent* e = readdir(d))
    if (std::string{e->d_name}.rfind("vfio", 0) == 0) node = "/dev/vfio/devices/" + std::string{e->d_name};
  closedir(d);
  if (node.empty()) return -ENOENT;
  device_ = open(node.c_str(), O_RDWR | O_CLOEXEC);
  return device_ < 0 ? neg_errno() : 0;
}

int vfio_edu::bind_iommufd(int iommufd, const std::uint8_t* token, std::uint32_t& devid) {
  vfio_device_bind_iommufd_73 b{};
  b.argsz = sizeof b;
  b.iommufd = iommufd;
  if (token) {
    b.flags = bind_flag_token;
    b.token_uuid_ptr = reinterpret_cast<std::uintptr_t>(token);
  }
  if (ioctl(device_, vfio_device_bind_iommufd, &b) < 0) return neg_errno();
  devid = b.out_devid;
  return load_regions();
}

int vfio_edu::attach_pt(std::uint32_t& pt_id) {
  vfio_device_attach_iommufd_pt_73 a{};
  a.argsz = sizeof a;
  a.pt_id = pt_id;
  if (ioctl(device_, vfio_device_attach_iommufd_pt, &a) < 0) return neg_errno();
  pt_id = a.pt_id;
  return 0;
}

namespace {
// Linux 7.3's include/uapi/linux/iommufd.h.
struct iommu_ioas_alloc_73 {
  __u32 size;
  __u32 flags;
  __u32 out_ioas_id;
};
constexpr unsigned long iommu_ioas_alloc = _IO(';', 0x81);
struct iommu_ioas_map_file_73 {
  __u32 size;
  __u32 flags;
  __u32 ioas_id;
  __s32 fd;
  __aligned_u64 start;
  __aligned_u64 length;
  __aligned_u64 iova;
};
constexpr unsigned long iommu_ioas_map_file = _IO(';', 0x8f);
constexpr std::uint32_t map_fixed_iova = 1u << 0, map_writeable = 1u << 1, map_readable = 1u << 2;
}  // namespace

int iommufd_context(int memfd, std::uint64_t iova, std::size_t bytes, int& iommufd, std::uint32_t& ioas_id) {
  iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  if (iommufd < 0) return neg_errno();
  iommu_ioas_alloc_73 a{};
  a.size = sizeof a;
  if (ioctl(iommufd, iommu_ioas_alloc, &a) < 0) return neg_errno();
  ioas_id = a.out_ioas_id;
  iommu_ioas_map_file_73 m{};
  m.size = sizeof m;
  m.flags = map_fixed_iova | map_writeable | map_readable;
  m.ioas_id = ioas_id;
  m.fd = memfd;
  m.length = bytes;
  m.iova = iova;
  return ioctl(iommufd, iommu_ioas_map_file, &m) < 0 ? neg_errno() : 0;
}

int vfio_edu::load_regions() {
  for (std::uint32_t index : {std::uint32_t{VFIO_PCI_BAR0_REGION_INDEX}, std::uint32_t{VFIO_PCI_CONFIG_REGION_INDEX}}) {
    vfio_region_info r{};
    r.argsz = sizeof r;
    r.index = index;
    if (ioctl(device_, VFIO_DEVICE_GET_REGION_INFO, &r) < 0) return neg_errno();
    (index == VFIO_PCI_BAR0_REGION_INDEX ? bar0_offset_ : config_offset_) = r.offset;
  }
  return 0;
}

int vfio_edu::map_dma(std::uint64_t iova, void* vaddr, std::uint64_t size, std::uint32_t extra_flags) {
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | extra_flags;
  if (extra_flags & VFIO_DMA_MAP_FLAG_VADDR) m.flags = VFIO_DMA_MAP_FLAG_VADDR;
  m.vaddr = reinterpret_cast<std::uintptr_t>(vaddr);
  m.iova = iova;
  m.size = size;
  return ioctl(container_, VFIO_IOMMU_MAP_DMA, &m) < 0 ? neg_errno() : 0;
}

int vfio_edu::unmap_dma(std::uint64_t iova, std::uint64_t size, std::uint32_t flags) {
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.flags = flags;
  u.iova = iova;
  u.size = size;
  return ioctl(container_, VFIO_IOMMU_UNMAP_DMA, &u) < 0 ? neg_errno() : 0;
}

std::optional<std::uint32_t> vfio_edu::bar0_read32(std::uint64_t reg) const {
  std::uint32_t v = 0;
  if (pread(device_, &v, sizeof v, static_cast<off_t>(bar0_offset_ + reg)) != sizeof v) return std::nullopt;
  return v;
}

bool vfio_edu::bar0_write32(std::uint64_t reg, std::uint32_t v) const {
  return pwrite(device_, &v, sizeof v, static_cast<off_t>(bar0_offset_ + reg)) == sizeof v;
}

std::optional<std::uint32_t> vfio_edu::config_read(unsigned offset, unsigned size) const {
  std::uint32_t v = 0;
  if (pread(device_, &v, size, static_cast<off_t>(config_offset_ + offset)) != static_cast<ssize_t>(size))
    return std::nullopt;
  return v;
}

bool vfio_edu::config_write16(unsigned offset, std::uint16_t v) const {
  return pwrite(device_, &v, sizeof v, static_cast<off_t>(config_offset_ + offset)) == sizeof v;
}

int vfio_edu::set_msi_trigger(int efd) const {
  std::vector<std::uint8_t> buf(sizeof(vfio_irq_set) + sizeof(std::int32_t));
  auto* s = reinterpret_cast<vfio_irq_set*>(buf.data());
  s->argsz = static_cast<std::uint32_t>(buf.size());
  s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  s->index = VFIO_PCI_MSI_IRQ_INDEX;
  s->start = 0;
  s->count = 1;
  std::memcpy(s->data, &efd, sizeof efd);
  return ioctl(device_, VFIO_DEVICE_SET_IRQS, s) < 0 ? neg_errno() : 0;
}

int vfio_edu::set_msi_none(std::uint32_t start, std::uint32_t count) const {
  vfio_irq_set s{};
  s.argsz = sizeof s;
  s.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
  s.index = VFIO_PCI_MSI_IRQ_INDEX;
  s.start = start;
  s.count = count;
  return ioctl(device_, VFIO_DEVICE_SET_IRQS, &s) < 0 ? neg_errno() : 0;
}

bool vfio_edu::start_dma(std::uint64_t iova, std::uint32_t bytes, bool to_ram, bool irq) const {
  const std::uint64_t src = to_ram ? edu::dma_buffer : iova;
  const std::uint64_t dst = to_ram ? iova : edu::dma_buffer;
  std::uint32_t cmd = edu::dma_cmd_run;
  if (to_ram) cmd |= edu::dma_cmd_to_ram;
  if (irq) cmd |= edu::dma_cmd_irq;
  return bar0_write32(edu::reg_dma_src, static_cast<std::uint32_t>(src)) &&
         bar0_write32(edu::reg_dma_dst, static_cast<std::uint32_t>(dst)) &&
         bar0_write32(edu::reg_dma_count, bytes) && bar0_write32(edu::reg_dma_cmd, cmd);
}

bool vfio_edu::wait_dma(int timeout_ms) const {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    const auto cmd = bar0_read32(edu::reg_dma_cmd);
    if (!cmd) return false;
    if (!(*cmd & edu::dma_cmd_run)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

void take_irq_and_die_mid_dma(std::string_view scenario, std::string_view who, const vfio_edu& v,
                              std::uint8_t* dst, std::uint64_t dst_iova) {
  const int efd = eventfd(0, EFD_CLOEXEC);
  report(scenario, fmt::format("{}_set_msi", who), v.set_msi_trigger(efd));
  report(scenario, fmt::format("{}_irq_delivered", who), wait_eventfd(efd, 1000) ? 1 : 0);
  v.bar0_write32(edu::reg_irq_ack, edu::irq_dma);
  std::memset(dst, 0, edu::dma_max);
  if (!v.start_dma(dst_iova, edu::dma_max, true, true)) fail(scenario, fmt::format("{}_dma_start", who));
  std::fflush(stdout);
  kill(getpid(), SIGKILL);
  _exit(1);
}

keepalive::abi::device_entry wait_listed(bool latched) {
  keepalive::abi::device_entry row{};
  auto ctl = keepalive::abi::linux_syscalls().open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
  if (!ctl) return row;
  for (int i = 0; i < 300; ++i) {
    auto l = keepalive::abi::list_devices(keepalive::abi::linux_syscalls(), *ctl);
    if (l && l->size() == 1) row = (*l)[0];
    if (row.state != keepalive::abi::device_state{} && (!latched || row.nr_pending > 0)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  keepalive::abi::linux_syscalls().close(*ctl);
  return row;
}

std::optional<std::uint64_t> wait_eventfd(int efd, int timeout_ms) {
  pollfd p{efd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
  std::uint64_t count = 0;
  if (read(efd, &count, sizeof count) != sizeof count) return std::nullopt;
  return count;
}

std::optional<std::uint64_t> virt_to_phys(const void* vaddr) {
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  const auto va = reinterpret_cast<std::uintptr_t>(vaddr);
  std::uint64_t entry = 0;
  const ssize_t n = pread(fd, &entry, sizeof entry, static_cast<off_t>(va / page * sizeof entry));
  close(fd);
  constexpr std::uint64_t present = 1ull << 63, pfn_mask = (1ull << 55) - 1;
  if (n != sizeof entry || !(entry & present) || !(entry & pfn_mask)) return std::nullopt;
  return (entry & pfn_mask) * page + va % page;
}

}  // namespace ka_guest
