// The GPU layers' arena: measuring and carving agree, rewinding keeps the high-water mark, and a
// region that is too small is an error before anything runs.
#include <doctest/doctest.h>

#include <vector>

#include "gecko/layers/cuda/arena.hpp"

using gecko::layers::cuda::Arena;

TEST_CASE("arena peak survives rewinds and sizes the real region") {
  auto run = [](Arena& a) {
    a.take<float>(100);
    const std::size_t mark = a.used();
    a.take<char>(5000);  // scratch of one stage
    a.rewind(mark);
    a.take<double>(10);  // a smaller later stage
    return a.status("workspace");
  };
  Arena m = Arena::measure();
  CHECK(run(m).ok());
  CHECK(m.peak() >= 400 + 5000);
  CHECK(m.peak() > m.used());
  std::vector<char> exact(m.peak()), small(m.peak() - 1);
  Arena a(exact.data(), exact.size());
  CHECK(run(a).ok());
  CHECK(a.peak() == m.peak());
  Arena b(small.data(), small.size());
  const auto st = run(b);
  CHECK(!st.ok());
  CHECK(st.message().find("workspace memory too small") != std::string::npos);
}

TEST_CASE("arena buffers are 256-byte aligned and disjoint") {
  std::vector<char> mem(1 << 16);
  Arena a(mem.data(), mem.size());
  char* p = a.take<char>(3);
  float* q = a.take<float>(7);
  CHECK(reinterpret_cast<std::uintptr_t>(q) % 256 == reinterpret_cast<std::uintptr_t>(p) % 256);
  CHECK(reinterpret_cast<char*>(q) >= p + 3);
}
