// The header patch 0009 adds to the kernel (arch/x86/kvm/vmx/keepalive_pi.h) is
// kernel/linux/kvm/keepalive_pi.h, byte for byte: what the other tests here check is what
// the kernel builds. kernel/linux/kvm/check-header.sh is the same check in shell.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>

namespace {
namespace fs = std::filesystem;

const fs::path repo_root = fs::path{__FILE__}.parent_path().parent_path().parent_path();
const fs::path patch_path =
    repo_root / "kernel/linux/patches/0009-kvm-vmx-keep-posted-interrupts-of-kept-alive-devices.patch";
const fs::path header_path = repo_root / "kernel/linux/kvm/keepalive_pi.h";

std::string slurp(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  REQUIRE_MESSAGE(in.good(), "cannot read " << p.string());
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

// The new file's text from a git diff: the "+" lines of its single "@@ -0,0 +1,N @@" hunk.
std::string new_file_from_patch(const std::string& patch, const std::string& path, int& declared_lines) {
  std::istringstream in{patch};
  std::string line;
  const std::string header = "diff --git a/" + path + " b/" + path;
  while (std::getline(in, line) && line != header) {
  }
  REQUIRE_MESSAGE(line == header, "patch has no " << path);
  const std::regex hunk{R"(^@@ -0,0 \+1,(\d+) @@.*$)"};
  std::smatch m;
  bool new_file = false;
  while (std::getline(in, line) && !std::regex_match(line, m, hunk)) new_file = new_file || line == "--- /dev/null";
  REQUIRE(new_file);
  REQUIRE(m.size() == 2);
  declared_lines = std::stoi(m[1].str());
  std::string text;
  for (int i = 0; i < declared_lines && std::getline(in, line); ++i) {
    const bool addition = !line.empty() && line[0] == '+';
    REQUIRE_MESSAGE(addition, "line " << i + 1 << " of the hunk is not an addition");
    text += line.substr(1) + "\n";
  }
  // A file without a final newline would be followed by "\ No newline at end of file".
  if (std::getline(in, line)) CHECK(line.rfind("\\ No newline", 0) != 0);
  return text;
}
}  // namespace

TEST_CASE("patch 0009 adds kernel/linux/kvm/keepalive_pi.h unchanged as arch/x86/kvm/vmx/keepalive_pi.h") {
  const std::string header = slurp(header_path);
  int declared = 0;
  const std::string in_patch = new_file_from_patch(slurp(patch_path), "arch/x86/kvm/vmx/keepalive_pi.h", declared);
  CHECK(declared > 100);
  CHECK(in_patch.size() == header.size());
  CHECK(in_patch == header);
}

TEST_CASE("the patch includes the header where the kernel code uses it") {
  const std::string patch = slurp(patch_path);
  CHECK(patch.find("+#include \"keepalive_pi.h\"") != std::string::npos);
  CHECK(patch.find("+++ b/arch/x86/kvm/vmx/posted_intr.c") != std::string::npos);
}
