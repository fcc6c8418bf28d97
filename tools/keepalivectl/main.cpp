// keepalivectl: inspect and operate a keepalive host through the sim
// transport (keepalive-simd). Exit status 0 on success, 1 on any error, with
// one line "keepalivectl: <what>: <errno name> (<meaning>)" on stderr.
#include <fcntl.h>
#include <linux/vfio_keepalive.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "handover.hpp"
#include "keepalive/snapshot.hpp"
#include "keepalive/detail/json.hpp"
#include "keepalive/abi/ops.hpp"
#include "keepalive/hw/irte.hpp"
#include "keepalive/sim_transport.hpp"
#include "keepalive_handover.h"

namespace {

using namespace keepalive;

constexpr const char* usage =
    "usage: keepalivectl [--socket PATH] [--json] COMMAND [ARG]\n"
    "commands:\n"
    "  status                 ABI version, capabilities, devices, generation (--json)\n"
    "  list                   devices in keepalive: BDF, state, irq mode, vectors, pending, DID (--json)\n"
    "  events                 drain and print the event queue\n"
    "  reset BDF              reset an OWNERLESS/RESTORED/ERROR device back to RUNNING\n"
    "  prepare                stage-2 prepare: freeze every ownerless device into the handover image\n"
    "  abort                  stage-2 abort\n"
    "  kexec                  prepare (if not yet), kexec the host, print the new generation and devices\n"
    "  stats                  platform and kernel counters (--json: the daemon's JSON)\n"
    "  describe               the kernel's devices, vectors, IRTEs and descriptors\n"
    "  dump-handover FILE     save the prepared handover image to FILE\n"
    "  decode-handover FILE   decode a handover image file and print every record\n"
    "  decode-snapshot FILE   decode a VMM snapshot (keepalive::snapshot) and print it\n"
    "The socket is --socket, else $KEEPALIVE_SIMD_SOCKET, else /run/keepalive-simd.sock.\n";

int fail(const std::string& what, const error& e) {
  std::string where = what;
  if (!e.context().empty()) where += ": " + e.context();
  std::fprintf(stderr, "keepalivectl: %s: %s\n", where.c_str(), error{e.code()}.message().c_str());
  return 1;
}
int usage_error(const std::string& what) {
  std::fprintf(stderr, "keepalivectl: %s: %s\n%s", what.c_str(), error{errc::invalid}.message().c_str(), usage);
  return 1;
}

std::string_view state_name(std::uint32_t s) {
  switch (s) {
    case VFIO_KEEPALIVE_STATE_RUNNING: return "running";
    case VFIO_KEEPALIVE_STATE_KEPT_ALIVE: return "kept_alive";
    case VFIO_KEEPALIVE_STATE_OWNERLESS: return "ownerless";
    case VFIO_KEEPALIVE_STATE_RECLAIMED: return "reclaimed";
    case VFIO_KEEPALIVE_STATE_FROZEN: return "frozen";
    case VFIO_KEEPALIVE_STATE_RESTORED: return "restored";
    case VFIO_KEEPALIVE_STATE_ERROR: return "error";
    default: return "invalid";
  }
}
std::string_view irq_name(std::uint32_t m) {
  switch (m) {
    case VFIO_KEEPALIVE_IRQ_NONE: return "none";
    case VFIO_KEEPALIVE_IRQ_POSTED: return "posted";
    case VFIO_KEEPALIVE_IRQ_MASKED: return "masked";
    default: return "invalid";
  }
}
std::string_view event_name(std::uint32_t t) {
  switch (t) {
    case VFIO_KEEPALIVE_EVENT_NONE: return "NONE";
    case VFIO_KEEPALIVE_EVENT_ENUM_FAILED: return "ENUM_FAILED";
    case VFIO_KEEPALIVE_EVENT_HANDOVER_REJECTED: return "HANDOVER_REJECTED";
    case VFIO_KEEPALIVE_EVENT_AER: return "AER";
    case VFIO_KEEPALIVE_EVENT_DMA_FAULT: return "DMA_FAULT";
    case VFIO_KEEPALIVE_EVENT_IR_FAULT: return "IR_FAULT";
    case VFIO_KEEPALIVE_EVENT_RESET: return "RESET";
    default: return "UNKNOWN";
  }
}
std::vector<std::string_view> cap_names(std::uint32_t caps) {
  std::vector<std::string_view> out;
  if (caps & VFIO_KEEPALIVE_CAP_POSTED_INTR) out.push_back("posted-interrupts");
  if (caps & VFIO_KEEPALIVE_CAP_MSI_MASKING) out.push_back("msi-masking");
  if (caps & VFIO_KEEPALIVE_CAP_STAGE2) out.push_back("stage2");
  if (caps & VFIO_KEEPALIVE_CAP_EVENTS) out.push_back("events");
  return out;
}

struct tool {
  sim_transport& t;
  bool json = false;
  int ctl = -1;

  status open_ctl() {
    auto fd = t.open(VFIO_KEEPALIVE_CTL_PATH, O_RDWR);
    if (!fd) return fd.err();
    ctl = *fd;
    return {};
  }

  void print_table(const std::vector<abi::device_entry>& rows) const {
    if (json) {
      std::string s = "[";
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        s += fmt::format(
            "{}{{\"bdf\":\"{}\",\"state\":\"{}\",\"irq_mode\":\"{}\",\"nr_vectors\":{},\"nr_pending\":{},\"domain_id\":{}}}",
            i ? "," : "", r.device.to_string(), state_name(static_cast<std::uint32_t>(r.state)),
            irq_name(static_cast<std::uint32_t>(r.mode)), r.nr_vectors, r.nr_pending, r.domain.value());
      }
      fmt::print("{}]\n", s);
      return;
    }
    fmt::print("{:<14}{:<12}{:<8}{:>8}{:>9}{:>6}\n", "BDF", "STATE", "IRQ", "VECTORS", "PENDING", "DID");
    for (const auto& r : rows)
      fmt::print("{:<14}{:<12}{:<8}{:>8}{:>9}{:>6}\n", r.device.to_string(), state_name(static_cast<std::uint32_t>(r.state)),
                 irq_name(static_cast<std::uint32_t>(r.mode)), r.nr_vectors, r.nr_pending, r.domain.value());
  }

  int status_cmd() {
    if (auto st = open_ctl(); !st) return fail("status", st.err());
    auto info = abi::get_info(t, ctl);
    if (!info) return fail("status", info.err());
    const auto caps = cap_names(info->caps);
    const auto& h = t.host();
    if (json) {
      std::string names;
      for (auto c : caps) names += fmt::format("{}\"{}\"", names.empty() ? "" : ",", c);
      fmt::print("{{\"version\":{},\"caps\":{},\"capabilities\":[{}],\"nr_devices\":{},\"generation\":{}}}\n",
                 info->version, info->caps, names, info->nr_devices, info->generation);
      return 0;
    }
    fmt::print("abi version   {}\n", info->version);
    fmt::print("capabilities  {:#x}", info->caps);
    for (auto c : caps) fmt::print(" {}", c);
    fmt::print("\ndevices       {} in keepalive\n", info->nr_devices);
    fmt::print("generation    {}\n", info->generation);
    fmt::print("host          {} kernel, {}posted interrupts, {} MiB physical, guest RAM from {:#x}\n",
               h.baseline ? "baseline" : "keepalive", h.posted_interrupts ? "" : "no ", h.phys_bytes >> 20,
               h.guest_start);
    fmt::print("functions    ");
    for (auto b : h.functions) fmt::print(" {}", b.to_string());
    fmt::print("\n");
    return 0;
  }

  int list_cmd() {
    if (auto st = open_ctl(); !st) return fail("list", st.err());
    auto rows = abi::list_devices(t, ctl);
    if (!rows) return fail("list", rows.err());
    print_table(*rows);
    return 0;
  }

  int drain_events(const char* what) {
    for (;;) {
      auto ev = abi::read_event(t, ctl);
      if (ev.code() == errc::again) return 0;
      if (!ev) return fail(what, ev.err());
      fmt::print("event seq {}  {}  {}", ev->seq, event_name(ev->type), ev->device.to_string());
      if (ev->error_number) {
        const char* name = ::strerrorname_np(ev->error_number);
        fmt::print("  errno {}", name ? name : std::to_string(ev->error_number));
      }
      fmt::print("  data {:#x}\n", ev->data);
    }
  }

  int events_cmd() {
    if (auto st = open_ctl(); !st) return fail("events", st.err());
    return drain_events("events");
  }

  int reset_cmd(std::string_view arg) {
    const auto b = bdf::parse(arg);
    if (!b) return usage_error(fmt::format("reset: not a BDF: '{}'", arg));
    if (auto st = open_ctl(); !st) return fail("reset", st.err());
    if (auto st = abi::reset_device(t, ctl, *b); !st) return fail("reset", st.err());
    fmt::print("reset {}: running\n", b->to_string());
    return 0;
  }

  int prepare_cmd() {
    if (auto st = open_ctl(); !st) return fail("prepare", st.err());
    auto r = abi::stage2_prepare(t, ctl);
    if (!r) return fail("prepare", r.err());
    fmt::print("prepared: {} device(s) frozen, handover image {} bytes\n", r->nr_devices, r->image_bytes);
    return 0;
  }

  int abort_cmd() {
    if (auto st = open_ctl(); !st) return fail("abort", st.err());
    auto r = abi::stage2_abort(t, ctl);
    if (!r) return fail("abort", r.err());
    fmt::print("aborted: {} device(s) thawed\n", r->nr_devices);
    return 0;
  }

  int kexec_cmd() {
    if (auto st = open_ctl(); !st) return fail("kexec", st.err());
    auto prep = abi::stage2_prepare(t, ctl);
    if (prep) {
      fmt::print("prepared: {} device(s) frozen, handover image {} bytes\n", prep->nr_devices, prep->image_bytes);
    } else {
      // EBUSY is either "already prepared" (go on) or "a device is still owned" (stop).
      auto rows = abi::list_devices(t, ctl);
      bool owned = !rows;
      if (rows)
        for (const auto& r : *rows)
          owned = owned || r.state == abi::device_state::kept_alive || r.state == abi::device_state::reclaimed;
      if (prep.code() != errc::busy || owned) return fail("kexec: prepare", prep.err());
      fmt::print("prepared already\n");
    }
    if (auto st = t.kexec(); !st) return fail("kexec", st.err());
    // This connection is a new process on the new kernel: its fds are gone.
    if (auto st = open_ctl(); !st) return fail("kexec: after", st.err());
    auto info = abi::get_info(t, ctl);
    if (!info) return fail("kexec: after", info.err());
    fmt::print("kexec done: generation {}\n", info->generation);
    auto rows = abi::list_devices(t, ctl);
    if (!rows) return fail("kexec: after", rows.err());
    print_table(*rows);
    return drain_events("kexec: events");
  }

  int stats_cmd() {
    auto text = t.stats_json();
    if (!text) return fail("stats", text.err());
    if (json) {
      fmt::print("{}", *text);
      return 0;
    }
    auto rows = detail::json::parse(*text);
    if (!rows) return fail("stats", error{errc::protocol, "the daemon's JSON does not parse"});
    std::size_t w = 0;
    for (const auto& [k, v] : *rows) w = std::max(w, k.size());
    for (const auto& [k, v] : *rows) fmt::print("{:<{}}  {}\n", k, w, v);
    return 0;
  }

  int describe_cmd() {
    auto text = t.describe();
    if (!text) return fail("describe", text.err());
    fmt::print("{}", *text);
    return 0;
  }

  int dump_handover_cmd(const std::string& file) {
    const auto& h = t.host();
    const auto* area = static_cast<const std::byte*>(t.map_phys(h.handover_start, h.handover_bytes));
    if (!area) return fail("dump-handover", error{errc_from_errno(errno), "map the handover region"});
    keepalive_handover_hdr_ser hdr{};
    std::memcpy(&hdr, area, sizeof hdr);
    const std::uint64_t total = hdr.total_bytes;
    if (hdr.magic != KEEPALIVE_HANDOVER_MAGIC || total < sizeof hdr || total > h.handover_bytes)
      return fail("dump-handover", error{errc::not_found, "no handover image (stage 2 not prepared)"});
    std::ofstream out{file, std::ios::binary | std::ios::trunc};
    out.write(reinterpret_cast<const char*>(area), static_cast<std::streamsize>(total));
    out.close();
    if (!out) return fail("dump-handover", error{errc::io, "write " + file});
    fmt::print("wrote {} bytes to {}\n", total, file);
    return 0;
  }
};

int decode_snapshot_file(const std::string& file) {
  std::ifstream in{file, std::ios::binary};
  if (!in) return fail("decode-snapshot", error{errc::not_found, "open " + file});
  const std::vector<char> raw{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  auto snap = keepalive::decode_snapshot(std::as_bytes(std::span{raw}));
  if (!snap) return fail("decode-snapshot " + file, snap.err());
  fmt::print("snapshot {}: {} bytes\n{}", file, raw.size(), keepalive::describe(*snap));
  return 0;
}

int decode_handover(const std::string& file) {
  std::ifstream in{file, std::ios::binary};
  if (!in) return fail("decode-handover", error{errc::not_found, "open " + file});
  const std::vector<char> raw{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  const auto bytes = std::as_bytes(std::span{raw});
  auto img = handover::decode(bytes);
  if (!img) return fail("decode-handover " + file, img.err());
  fmt::print("handover image {}: {} bytes, generation {}, next event seq {}\n", file, bytes.size(), img->generation,
             img->event_seq);
  const auto irta = hw::irta_reg::from_raw(img->iommu.irta);
  fmt::print("iommu: root table {:#x}, IRTA {:#x} (IR table {:#x}, {} entries, {}), pid area {:#x}, {} descriptor(s)\n",
             img->iommu.root_table.value(), irta.raw(), irta.base().value(), irta.entries(),
             irta.mode() == hw::apic_mode::x2apic ? "x2apic" : "xapic", img->iommu.pid_area.value(), img->iommu.nr_pids);
  fmt::print("ranges: {}\n", img->ranges.size());
  for (const auto& r : img->ranges) fmt::print("  [{:#x}, +{:#x})\n", r.start.value(), r.bytes);
  fmt::print("devices: {}\n", img->devices.size());
  for (const auto& d : img->devices) {
    fmt::print("  {}  state {}  token {}  domain {}  levels {}  irq {}  sl_root {:#x}\n", d.device.to_string(),
               state_name(d.state), d.owner.to_string(), d.did.value(), d.levels, irq_name(d.irq_mode),
               d.sl_root.value());
    for (std::size_t i = 0; i < d.bar.size(); ++i)
      if (d.bar[i] || d.bar_size[i]) fmt::print("    bar{} {:#x} size {:#x}\n", i, d.bar[i], d.bar_size[i]);
    fmt::print("    command {:#06x}  msix_ctrl {:#06x}\n", d.command, d.msix_ctrl);
    for (const auto& v : d.vectors) {
      fmt::print("    vector msix {} irte {} {}", v.msix.value(), v.irte.value(), v.posted ? "posted" : "remapped");
      if (v.posted) fmt::print(" guest vector {:#04x} pid {:#x}", v.guest_vector.value(), v.pid.value());
      fmt::print("\n");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket;
  bool json = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--socket") {
      if (i + 1 >= argc) return usage_error("--socket needs a path");
      socket = argv[++i];
    } else if (a == "--json") {
      json = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    } else {
      args.emplace_back(a);
    }
  }
  if (args.empty()) return usage_error("no command");
  const std::string& cmd = args[0];
  const bool one_arg =
      cmd == "reset" || cmd == "dump-handover" || cmd == "decode-handover" || cmd == "decode-snapshot";
  if (args.size() != (one_arg ? 2u : 1u)) return usage_error(fmt::format("{}: wrong number of arguments", cmd));
  if (cmd == "decode-handover") return decode_handover(args[1]);
  if (cmd == "decode-snapshot") return decode_snapshot_file(args[1]);

  static constexpr std::string_view known[] = {"status", "list",  "events", "reset",    "prepare",      "abort",
                                               "kexec",  "stats", "describe", "dump-handover"};
  if (std::find(std::begin(known), std::end(known), cmd) == std::end(known))
    return usage_error(fmt::format("unknown command '{}'", cmd));

  auto t = sim_transport::connect(socket);
  if (!t) return fail("keepalive-simd", t.err());
  tool tl{**t, json};
  if (cmd == "status") return tl.status_cmd();
  if (cmd == "list") return tl.list_cmd();
  if (cmd == "events") return tl.events_cmd();
  if (cmd == "reset") return tl.reset_cmd(args[1]);
  if (cmd == "prepare") return tl.prepare_cmd();
  if (cmd == "abort") return tl.abort_cmd();
  if (cmd == "kexec") return tl.kexec_cmd();
  if (cmd == "stats") return tl.stats_cmd();
  if (cmd == "describe") return tl.describe_cmd();
  return tl.dump_handover_cmd(args[1]);
}
