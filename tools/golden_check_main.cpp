// gecko-golden-check DIR: runs every golden case in DIR that gecko knows how to check and prints
// one line per file: PASS/FAIL/SKIP, the component, and the worst relative error with its tensor.
// Exit status: 0 if every known case passes, 1 if any fails, 77 if DIR does not exist.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "golden_checks.hpp"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 2 || std::string(argv[1]) == "--help") {
    std::printf("usage: gecko-golden-check DIR\n"
                "  Checks every *.safetensors golden case in DIR against gecko's CPU reference.\n");
    return argc == 2 ? 0 : 2;
  }
  const fs::path dir = argv[1];
  if (!fs::is_directory(dir)) {
    std::printf("SKIP: '%s' is not a directory\n", dir.string().c_str());
    return 77;
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  int failed = 0, passed = 0, skipped = 0;
  for (const auto& path : files) {
    const std::string name = path.stem().string();
    gecko::testing::GoldenCase gc;
    const auto st = gecko::testing::GoldenCase::load(path.string(), gc);
    if (!st.ok()) {
      std::printf("FAIL  %-24s %s\n", name.c_str(), st.to_string().c_str());
      ++failed;
      continue;
    }
    const auto r = gecko::golden::check_case(gc);
    if (!r.supported) {
      std::printf("SKIP  %-24s %-26s no checker for this component\n", name.c_str(), r.component.c_str());
      ++skipped;
    } else if (!r.error.empty()) {
      std::printf("FAIL  %-24s %-26s error: %s\n", name.c_str(), r.component.c_str(), r.error.c_str());
      ++failed;
    } else {
      const auto* w = r.worst_tensor();
      const bool ok = r.passed();
      std::printf("%s  %-24s %-26s worst rel err %.2e (%s), %zu tensors\n", ok ? "PASS" : "FAIL", name.c_str(),
                  r.component.c_str(), w ? w->cmp.rel_fro : 0.0, w ? w->name.c_str() : "-", r.tensors.size());
      ok ? ++passed : ++failed;
    }
  }
  std::printf("%d passed, %d failed, %d without a checker (tolerance %.0e)\n", passed, failed, skipped,
              gecko::golden::kTolerance);
  return failed ? 1 : 0;
}
