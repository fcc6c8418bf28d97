// ka_guest: the keepalive test program run inside the QEMU guest by
// kernel/linux/test.sh. Statically linked; see kernel/linux/README.md.
//
//   ka_guest stage1 [--baseline] [--fidelity]
//   ka_guest conformance
//   ka_guest unowned-fault
//   ka_guest unbind
//   ka_guest cdev
//   ka_guest stage2-before | stage2-after
//   ka_guest stage2x-before | stage2x-refused | stage2x-reset
#include <cstdio>
#include <cstring>
#include <string_view>

#include "guest.hpp"

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string_view cmd = argc > 1 ? argv[1] : "";
  bool baseline = false, fidelity = false;
  for (int i = 2; i < argc; ++i) {
    baseline = baseline || std::strcmp(argv[i], "--baseline") == 0;
    fidelity = fidelity || std::strcmp(argv[i], "--fidelity") == 0;
  }
  if (cmd == "stage1") return ka_guest::run_stage1(!baseline, fidelity);
  if (cmd == "conformance") return ka_guest::run_conformance();
  if (cmd == "unowned-fault") return ka_guest::run_unowned_fault();
  if (cmd == "unbind") return ka_guest::run_unbind();
  if (cmd == "cdev") return ka_guest::run_cdev();
  if (cmd == "stage2-before") return ka_guest::run_stage2(false);
  if (cmd == "stage2-after") return ka_guest::run_stage2(true);
  if (cmd == "stage2x-before") return ka_guest::run_stage2x(1);
  if (cmd == "stage2x-refused") return ka_guest::run_stage2x(2);
  if (cmd == "stage2x-reset") return ka_guest::run_stage2x(3);
  std::fprintf(stderr, "usage: %s stage1 [--baseline] [--fidelity] | conformance | unowned-fault | unbind | cdev | stage2-before | stage2-after | stage2x-before | stage2x-refused | stage2x-reset\n",
               argv[0]);
  return 2;
}
