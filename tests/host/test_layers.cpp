// The Gecko layers on the CPU (MEGA layer, normalized feed-forward, block): finite-difference
// gradients in double for every parameter and x (with documents and resets, and from a carried
// state), streaming equivalence (one call == chunk-aligned calls == prefix + partial chunks + single
// tokens, outputs and final state, with a bounded cache), float storage, checkpoints by name, and
// clear errors for bad arguments and illegal calls.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/block/reference.hpp"
#include "gecko/layers/mega/reference.hpp"
#include "gecko/layers/nffn/reference.hpp"
#include "test_util.hpp"

using namespace gecko;
using namespace gecko::layers;
using I64 = std::int64_t;

namespace {

// Tiny sizes that still exercise everything: 2 heads, 3 chunks of 4 (the working memory absorbs),
// 2 groups in every norm, RoPE on all heads.
GeckoConfig tiny_config() {
  GeckoConfig c;
  c.model_dim = 8;
  c.z_dim = 8;  // dz = 4
  c.value_dim = 6;  // dv = 3
  c.num_heads = 2;
  c.cema_ndim = 3;
  c.chunk_size = 4;
  c.timenorm_num_groups = 2;
  c.timenorm_beta1 = 0.9;
  c.timenorm_beta2 = 0.95;
  c.layernorm_num_groups = 2;
  c.rope_base = 10000.0;
  c.ffn_hidden_dim = 6;
  return c;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Random parameters of moderate size (Linear weights ~ 1/sqrt(fan_in)), so every path matters.
void randomize(ParameterSet& ps, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const auto& name : ps.names()) {
    HostTensor& t = *ps.find(name);
    double sd = 0.3;
    if (ends_with(name, ".weight") && t.shape.size() == 2) sd = 1.0 / std::sqrt(static_cast<double>(t.shape[1]));
    else if (ends_with(name, "cema.theta")) sd = 1.0;
    else if (ends_with(name, "cema.alpha") || ends_with(name, "cema.delta") || ends_with(name, "cema.gamma")) sd = 0.5;
    else if (ends_with(name, ".bias")) sd = 0.1;
    std::normal_distribution<double> d(0.0, sd);
    for (auto& v : t.data) v = d(rng);
  }
}

// Documents: each row starts a new document with probability p per token; ids are absolute and
// differ between rows, and bos_mask marks the starts.
struct Docs {
  std::vector<std::uint8_t> bos;
  std::vector<I64> seg;
};

Docs make_docs(I64 B, I64 L, std::uint64_t seed, double p = 0.2) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution start(p);
  Docs d;
  for (I64 b = 0; b < B; ++b) {
    I64 id = 10 * b;
    for (I64 t = 0; t < L; ++t) {
      const bool s = start(rng);
      id += s;
      d.bos.push_back(s);
      d.seg.push_back(id);
    }
  }
  return d;
}

enum class Layer { kMega, kBlock };

const char* layer_name(Layer l) { return l == Layer::kMega ? "mega" : "block"; }

ParameterSet make_params(Layer l, const GeckoConfig& c) {
  return l == Layer::kMega ? mega::make_parameters(c) : block::make_parameters(c);
}

template <class T>
Status forward(Layer l, const GeckoConfig& c, const ParameterSet& ps, const mega::ForwardArgs<T>& a,
               mega::State* s = nullptr) {
  return l == Layer::kMega ? mega::cpu::forward(c, ps, a, s) : block::cpu::forward(c, ps, a, s);
}

Status backward(Layer l, const GeckoConfig& c, const ParameterSet& ps, const mega::BackwardArgs<double>& a,
                ParameterSet& grads, const mega::State* s = nullptr) {
  return l == Layer::kMega ? mega::cpu::backward(c, ps, a, grads, s) : block::cpu::backward(c, ps, a, grads, s);
}

// One call's inputs, dense.
struct Call {
  I64 B, L, D;
  std::vector<double> x;
  Docs docs;
  bool documents = false;
};

template <class A>
void set_call(A& a, const Call& k) {
  a.x = host_view(k.x, {k.B, k.L, k.D});
  if (k.documents) {
    a.bos_mask = host_view(k.docs.bos, {k.B, k.L});
    a.segment_idx = host_view(k.docs.seg, {k.B, k.L});
  }
}

std::vector<double> run(Layer l, const GeckoConfig& c, const ParameterSet& ps, const Call& k,
                        const mega::State* start = nullptr) {
  std::vector<double> out(k.x.size());
  mega::ForwardArgs<double> f;
  set_call(f, k);
  f.out = host_view(out, {k.B, k.L, k.D});
  mega::State s = start ? *start : mega::State{};
  const Status st = forward(l, c, ps, f, &s);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  return out;
}

// Finite differences of loss = <out, dout> for every parameter and x.
void check_fd(Layer l, const GeckoConfig& c, Call k, const mega::State* start, std::uint64_t seed) {
  auto ps = make_params(l, c);
  randomize(ps, seed);
  const auto dout = test::random_normal(k.x.size(), seed + 1);
  auto loss = [&]() { return test::dot(run(l, c, ps, k, start), dout); };
  auto grads = ps.zeros_like();
  std::vector<double> dx(k.x.size());
  mega::BackwardArgs<double> g;
  set_call(g, k);
  g.dout = host_view(dout, {k.B, k.L, k.D});
  g.dx = host_view(dx, {k.B, k.L, k.D});
  const Status st = backward(l, c, ps, g, grads, start);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  for (const auto& name : ps.names()) {
    INFO(layer_name(l) << " parameter " << name);
    test::check_gradient(name, ps.find(name)->data, grads.find(name)->data, loss, 10);
  }
  test::check_gradient("x", k.x, dx, loss, 40);
}

Call make_call(const GeckoConfig& c, I64 B, I64 L, bool documents, std::uint64_t seed) {
  Call k{B, L, c.model_dim, test::random_normal(B * L * c.model_dim, seed), make_docs(B, L, seed + 1), documents};
  return k;
}

// Feeds x in calls of the given lengths through one state; returns the outputs.
struct Stream {
  std::vector<double> out;
  mega::State state;
  I64 max_cached = 0;
};

Stream stream(Layer l, const GeckoConfig& c, const ParameterSet& ps, const Call& k, const std::vector<I64>& calls) {
  Stream s;
  s.out.assign(k.x.size(), 0.0);
  I64 t0 = 0;
  for (I64 n : calls) {
    mega::ForwardArgs<double> f;
    f.x = TensorView<const double>::strided(k.x.data() + t0 * k.D, {k.B, n, k.D}, {k.L * k.D, k.D, 1}, Memory::kHost);
    if (k.documents) {
      f.bos_mask = TensorView<const std::uint8_t>::strided(k.docs.bos.data() + t0, {k.B, n}, {k.L, 1}, Memory::kHost);
      f.segment_idx = TensorView<const I64>::strided(k.docs.seg.data() + t0, {k.B, n}, {k.L, 1}, Memory::kHost);
    }
    f.out = TensorView<double>::strided(s.out.data() + t0 * k.D, {k.B, n, k.D}, {k.L * k.D, k.D, 1}, Memory::kHost);
    const Status st = forward(l, c, ps, f, &s.state);
    REQUIRE_MESSAGE(st.ok(), "call at " << t0 << " of " << n << " tokens: " << st.to_string());
    t0 += n;
    // Constant memory: the cache never holds more than the previous chunk plus the current one's
    // tokens, and exactly one chunk at a boundary.
    const mega::State& q = s.state;
    s.max_cached = std::max(s.max_cached, q.cached);
    CHECK(q.cached <= 2 * c.chunk_size - 1);
    if (t0 % c.chunk_size == 0) CHECK(q.cached == c.chunk_size);
    CHECK(static_cast<I64>(q.sca_prev_k.size()) == k.B * q.cached * c.z_dim);
    CHECK(static_cast<I64>(q.prev_v.size()) == k.B * q.cached * c.value_dim);
  }
  REQUIRE(t0 == k.L);
  return s;
}

// Element-wise closeness that accepts equal infinities (an empty memory's log-normaliser is -inf).
void check_same(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  REQUIRE_MESSAGE(got.size() == want.size(), what);
  double scale = 1.0;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    INFO(what << "[" << i << "]: got " << got[i] << " want " << want[i]);
    CHECK(std::fabs(got[i] - want[i]) <= 1e-11 * scale);
  }
}

void check_same_state(const mega::State& a, const mega::State& b) {
  CHECK(a.batch == b.batch);
  CHECK(a.position == b.position);
  CHECK(a.documents == b.documents);
  CHECK(a.cached == b.cached);
  CHECK(a.has_memory == b.has_memory);
  CHECK(a.norm_count == b.norm_count);
  check_same(a.norm_mean, b.norm_mean, "norm_mean");
  check_same(a.norm_var, b.norm_var, "norm_var");
  check_same(a.cema_h, b.cema_h, "cema_h");
  check_same(a.sca_prev_k, b.sca_prev_k, "sca_prev_k");
  check_same(a.awm_prev_k, b.awm_prev_k, "awm_prev_k");
  check_same(a.prev_v, b.prev_v, "prev_v");
  check_same(a.memory, b.memory, "memory");
  check_same(a.log_norm, b.log_norm, "log_norm");
  CHECK(a.prev_segment_idx == b.prev_segment_idx);
  CHECK(a.prev_segment_count == b.prev_segment_count);
}

bool contains(const std::string& msg, const std::string& part) {
  INFO("message: " << msg << "\nexpected to contain: " << part);
  CHECK(msg.find(part) != std::string::npos);
  return msg.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("MEGA layer and block gradients match finite differences") {
  const GeckoConfig c = tiny_config();
  for (Layer l : {Layer::kMega, Layer::kBlock}) {
    SUBCASE(layer_name(l)) {
      SUBCASE("one document") { check_fd(l, c, make_call(c, 2, 12, false, 11), nullptr, 21); }
      SUBCASE("documents: resets in the norm and CEMA, masks in attention and memory") {
        check_fd(l, c, make_call(c, 2, 12, true, 12), nullptr, 22);
      }
      SUBCASE("from a carried state (a 2-chunk prefix), documents, partial RoPE") {
        GeckoConfig cp = c;
        cp.num_rope_heads = 1;
        auto ps = make_params(l, cp);
        randomize(ps, 22);
        Call prefix = make_call(cp, 2, 8, true, 13);
        mega::State s;
        mega::ForwardArgs<double> f;
        set_call(f, prefix);
        std::vector<double> out(prefix.x.size());
        f.out = host_view(out, {2, 8, cp.model_dim});
        REQUIRE(forward(l, cp, ps, f, &s).ok());
        Call k = make_call(cp, 2, 8, true, 14);
        for (auto& id : k.docs.seg) id += 3;  // continue the prefix's documents
        check_fd(l, cp, k, &s, 23);
      }
      SUBCASE("a call within the first chunk (the working memory outputs zeros)") {
        check_fd(l, c, make_call(c, 2, 3, true, 15), nullptr, 24);
      }
    }
  }
}

TEST_CASE("normalized feed-forward gradients match finite differences") {
  const GeckoConfig c = tiny_config();
  auto ps = nffn::make_parameters(c);
  randomize(ps, 5);
  const I64 B = 2, L = 5, D = c.model_dim;
  auto x = test::random_normal(B * L * D, 6);
  const auto dout = test::random_normal(B * L * D, 7);
  auto loss = [&]() {
    std::vector<double> out(x.size());
    nffn::ForwardArgs<double> f;
    f.x = host_view(x, {B, L, D});
    f.out = host_view(out, {B, L, D});
    REQUIRE(nffn::cpu::forward(c, ps, f).ok());
    return test::dot(out, dout);
  };
  auto grads = ps.zeros_like();
  std::vector<double> dx(x.size());
  nffn::BackwardArgs<double> g;
  g.x = host_view(x, {B, L, D});
  g.dout = host_view(dout, {B, L, D});
  g.dx = host_view(dx, {B, L, D});
  const Status st = nffn::cpu::backward(c, ps, g, grads);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  for (const auto& name : ps.names()) test::check_gradient(name, ps.find(name)->data, grads.find(name)->data, loss, 16);
  test::check_gradient("x", x, dx, loss, 30);
}

TEST_CASE("the block is the MEGA layer followed by the feed-forward network on its output") {
  const GeckoConfig c = tiny_config();
  auto bp = block::make_parameters(c);
  randomize(bp, 31);
  auto mp = mega::make_parameters(c);
  auto np = nffn::make_parameters(c);
  for (const auto& n : mp.names()) mp.find(n)->data = bp.find(block::kMegaPrefix + n)->data;
  for (const auto& n : np.names()) np.find(n)->data = bp.find(block::kNffnPrefix + n)->data;
  const Call k = make_call(c, 2, 8, true, 32);
  const auto y = run(Layer::kMega, c, mp, k);
  std::vector<double> want(y.size());
  nffn::ForwardArgs<double> f;
  f.x = host_view(y, {2, 8, c.model_dim});
  f.out = host_view(want, {2, 8, c.model_dim});
  REQUIRE(nffn::cpu::forward(c, np, f).ok());
  check_same(run(Layer::kBlock, c, bp, k), want, "block out");
}

TEST_CASE("MEGA layer and block stream: one call == chunk-aligned calls == partial chunks == single tokens") {
  const GeckoConfig c = tiny_config();  // C = 4
  const I64 B = 2, L = 16;
  const std::vector<std::vector<I64>> splits = {
      {8, 4, 4},                                             // chunk-aligned
      {4, 2, 1, 1, 4, 3, 1},                                 // full, tail at a boundary, single tokens
      {8, 1, 1, 1, 1, 1, 1, 1, 1},                           // prefix, then decoding
      {3, 1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1},                  // inside the first chunk, multi-token tails
      std::vector<I64>(16, 1),                               // token by token from the start
  };
  for (Layer l : {Layer::kMega, Layer::kBlock})
    for (bool documents : {false, true}) {
      CAPTURE(layer_name(l));
      CAPTURE(documents);
      auto ps = make_params(l, c);
      randomize(ps, 41);
      const Call k = make_call(c, B, L, documents, 42);
      const Stream one = stream(l, c, ps, k, {L});
      // The stateless call computes the same thing as a fresh state's.
      check_same(run(l, c, ps, k), one.out, "stateless call");
      for (const auto& split : splits) {
        std::string shape;
        for (I64 n : split) shape += std::to_string(n) + " ";
        CAPTURE(shape);
        const Stream s = stream(l, c, ps, k, split);
        check_same(s.out, one.out, "streamed out");
        check_same_state(s.state, one.state);
      }
    }
}

TEST_CASE("a long decoded stream keeps a bounded cache and matches one call") {
  GeckoConfig c = tiny_config();
  c.chunk_size = 3;
  const I64 B = 1, L = 24;
  auto ps = make_params(Layer::kMega, c);
  randomize(ps, 51);
  const Call k = make_call(c, B, L, true, 52);
  const Stream one = stream(Layer::kMega, c, ps, k, {L});
  std::vector<I64> split = {3};
  while (static_cast<I64>(split.size()) < L - 2) split.push_back(1);
  const Stream s = stream(Layer::kMega, c, ps, k, split);
  CHECK(s.max_cached == 2 * c.chunk_size - 1);
  check_same(s.out, one.out, "decoded out");
  check_same_state(s.state, one.state);
}

TEST_CASE("MEGA layer and block in float storage match the double reference") {
  const GeckoConfig c = tiny_config();
  for (Layer l : {Layer::kMega, Layer::kBlock}) {
    CAPTURE(layer_name(l));
    auto ps = make_params(l, c);
    randomize(ps, 61);
    Call k = make_call(c, 2, 8, true, 62);
    const auto xf = test::narrow<float>(k.x);
    k.x = test::widen(xf);  // the same input, so only the output rounding differs
    const auto want = run(l, c, ps, k);
    std::vector<float> out(xf.size());
    mega::ForwardArgs<float> f;
    f.x = host_view(xf, {2, 8, c.model_dim});
    f.bos_mask = host_view(k.docs.bos, {2, 8});
    f.segment_idx = host_view(k.docs.seg, {2, 8});
    f.out = host_view(out, {2, 8, c.model_dim});
    REQUIRE(forward(l, c, ps, f).ok());
    GECKO_CHECK_CLOSE(test::widen(out), want, 1e-6, "float out");
  }
}

TEST_CASE("checkpoints load by the authors' names, under a prefix, with clear errors") {
  const GeckoConfig c = tiny_config();
  auto ps = mega::make_parameters(c);
  randomize(ps, 71);
  const std::string prefix = "layers.2.mega.";
  io::SafetensorsFile file;
  ps.store(file, prefix, DType::kF64);
  const std::int64_t zero = 0;
  file.add(prefix + "timenorm.prior_count", {}, &zero);  // the authors' constant buffer: ignored
  file.add("layers.3.mega.wz.bias", {8}, ps.find("wz.bias")->data.data());  // another layer: ignored

  SUBCASE("round trip through a file, every value") {
    const auto path = (std::filesystem::temp_directory_path() / "gecko_layers_ckpt.safetensors").string();
    REQUIRE(io::write_safetensors(path, file).ok());
    auto loaded = mega::make_parameters(c);
    const Status st = loaded.load_file(path, prefix);
    std::filesystem::remove(path);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    for (const auto& n : ps.names()) CHECK(loaded.find(n)->data == ps.find(n)->data);
  }
  SUBCASE("float32 and bfloat16 checkpoints convert on load") {
    io::SafetensorsFile f32, bf16;
    ps.store(f32, "", DType::kF32);
    ps.store(bf16, "", DType::kBF16);
    auto a = mega::make_parameters(c), b = mega::make_parameters(c);
    REQUIRE(a.load(f32).ok());
    REQUIRE(b.load(bf16).ok());
    for (const auto& n : ps.names()) {
      GECKO_CHECK_CLOSE(a.find(n)->data, ps.find(n)->data, 1e-7, n);
      GECKO_CHECK_CLOSE(b.find(n)->data, ps.find(n)->data, 1e-2, n);
    }
  }
  SUBCASE("a missing tensor names itself and leaves the set unchanged") {
    io::SafetensorsFile f = file;
    f.tensors.erase(f.tensors.begin() + 8);  // wz.bias (store keeps declaration order)
    auto loaded = mega::make_parameters(c);
    loaded.fill(0.5);
    const Status st = loaded.load(f, prefix);
    CHECK(!st.ok());
    contains(st.message(), "checkpoint has no tensor 'layers.2.mega.wz.bias' (expected shape [8])");
    for (const auto& n : loaded.names())
      for (double v : loaded.find(n)->data) CHECK(v == 0.5);
  }
  SUBCASE("a mis-shaped tensor") {
    io::SafetensorsFile f = file;
    for (auto& t : f.tensors)
      if (t.name == prefix + "wv.weight") t.shape = {8, 6};  // transposed: same bytes, wrong shape
    auto loaded = mega::make_parameters(c);
    contains(loaded.load(f, prefix).message(),
             "checkpoint tensor 'layers.2.mega.wv.weight' has shape [8, 6], expected [6, 8]");
  }
  SUBCASE("a tensor that is not floating point") {
    io::SafetensorsFile f;
    ps.store(f, "");
    for (auto& t : f.tensors)
      if (t.name == "gamma") {  // same shape, integer data
        t.dtype = DType::kI64;
        t.bytes.assign(t.numel() * sizeof(std::int64_t), 0);
      }
    auto loaded = mega::make_parameters(c);
    contains(loaded.load(f).message(), "checkpoint tensor 'gamma' has dtype I64, expected a floating type");
  }
  SUBCASE("a block loads both sublayers from one model checkpoint") {
    auto bp = block::make_parameters(c);
    randomize(bp, 72);
    io::SafetensorsFile model;
    bp.store(model, "layers.0.", DType::kF64);
    auto loaded = block::make_parameters(c);
    REQUIRE(loaded.load(model, "layers.0.").ok());
    for (const auto& n : bp.names()) CHECK(loaded.find(n)->data == bp.find(n)->data);
    CHECK(loaded.has("mega.wz.weight"));
    CHECK(loaded.has("nffn.fc3.weight"));
    contains(loaded.load(model, "layers.1.").message(), "checkpoint has no tensor 'layers.1.mega.timenorm.weight'");
  }
}

TEST_CASE("MEGA layer, feed-forward and block reject bad arguments with a message naming them") {
  const GeckoConfig c = tiny_config();
  auto ps = mega::make_parameters(c);
  randomize(ps, 81);
  const I64 B = 2, L = 8, D = c.model_dim;
  std::vector<double> x(B * L * D, 0.1), out(B * L * D), dx(B * L * D);
  std::vector<std::uint8_t> bos(B * L, 0);
  std::vector<I64> seg(B * L, 0);
  auto args = [&]() {
    mega::ForwardArgs<double> f;
    f.x = host_view(x, {B, L, D});
    f.out = host_view(out, {B, L, D});
    return f;
  };
  auto msg = [&](const mega::ForwardArgs<double>& f, mega::State* s = nullptr, const GeckoConfig* cfg = nullptr,
                 const ParameterSet* p = nullptr) {
    return mega::cpu::forward(cfg ? *cfg : c, p ? *p : ps, f, s).message();
  };
  REQUIRE(msg(args()).empty());

  SUBCASE("arguments") {
    auto f = args();
    f.x = host_view(x, {B * L, D});
    contains(msg(f), "x has shape [16, 8], expected [B, L, D]");
    f = args();
    f.x = host_view(x, {B, 2 * L, D / 2});
    contains(msg(f), "x has shape [2, 16, 4], expected [2, 16, 8]");
    f = args();
    f.out = TensorView<double>{};
    contains(msg(f), "out is missing");
    f = args();
    f.bos_mask = host_view(bos, {L, B});
    contains(msg(f), "bos_mask has shape [8, 2], expected [2, 8]");
    f = args();
    f.segment_idx = host_view(seg, {B * L});
    contains(msg(f), "segment_idx has shape [16], expected [2, 8]");
    f = args();
    f.x.memory = Memory::kDevice;
    contains(msg(f), "x lives in device memory, expected host memory");
  }
  SUBCASE("calls that cross a chunk boundary") {
    auto f = args();
    f.x = host_view(x, {B, 6, D});
    f.out = host_view(out, {B, 6, D});
    contains(msg(f), "a call of L=6 tokens at a chunk boundary (position 0) must be shorter than C=4 or a multiple of it");
    mega::State s;
    f.x = host_view(x, {B, 3, D});
    f.out = host_view(out, {B, 3, D});
    REQUIRE(msg(f, &s).empty());
    f.x = host_view(x, {B, 2, D});
    f.out = host_view(out, {B, 2, D});
    contains(msg(f, &s), "a call of L=2 tokens at stream position 3 (chunk offset 3, C=4) crosses a chunk boundary");
    f.x = host_view(x, {B, 4, D});
    f.out = host_view(out, {B, 4, D});
    contains(msg(f, &s), "crosses a chunk boundary");
    CHECK(s.position == 3);  // a refused call leaves the state alone
  }
  SUBCASE("a call that does not fit the stream") {
    mega::State s;
    auto f = args();
    REQUIRE(msg(f, &s).empty());
    f.x = host_view(x, {1, 1, D});
    f.out = host_view(out, {1, 1, D});
    contains(msg(f, &s), "x has B=1 rows but the stream in state has B=2");
    f = args();
    f.segment_idx = host_view(seg, {B, L});
    contains(msg(f, &s), "segment_idx is given but this stream started without documents");
    mega::State d;
    f = args();
    f.segment_idx = host_view(seg, {B, L});
    REQUIRE(msg(f, &d).empty());
    f.segment_idx = TensorView<const I64>{};
    contains(msg(f, &d), "segment_idx is required: this stream started in document mode");
    mega::State broken = s;
    broken.memory.pop_back();
    contains(msg(args(), &broken), "state.memory holds");
    broken = s;
    broken.cached = 3;
    contains(msg(args(), &broken), "state.cached is 3 tokens, expected 4 at position 8");
  }
  SUBCASE("config") {
    GeckoConfig bad = c;
    bad.z_dim = 9;
    contains(msg(args(), nullptr, &bad), "config.z_dim (9) must be divisible by config.num_heads (2)");
    bad = c;
    bad.z_dim = 6;  // dz = 3
    contains(msg(args(), nullptr, &bad), "must be even for RoPE");
    bad.num_rope_heads = 0;  // no RoPE: odd head widths are fine, but the parameters no longer fit
    contains(msg(args(), nullptr, &bad), "params: tensor 'wz.weight' has shape [8, 8], expected [6, 8]");
    bad = c;
    bad.num_rope_heads = 3;
    contains(msg(args(), nullptr, &bad), "config.num_rope_heads must be in [0, num_heads=2]");
    bad = c;
    bad.timenorm_beta2 = 1.0;
    contains(msg(args(), nullptr, &bad), "config.timenorm_beta2 must be in [0, 1)");
    bad = c;
    bad.timenorm_num_groups = 3;
    contains(msg(args(), nullptr, &bad), "config.model_dim (8) must be divisible by config.timenorm_num_groups (3)");
    bad = c;
    bad.chunk_size = 0;
    contains(msg(args(), nullptr, &bad), "config.chunk_size must be >= 1");
  }
  SUBCASE("parameters and gradients") {
    ParameterSet missing;
    for (const auto& spec : mega::parameter_specs(c))
      if (spec.name != "wh1.bias") missing.add(spec.name, spec.shape);
    contains(msg(args(), nullptr, nullptr, &missing), "params: tensor 'wh1.bias' [8] is missing");
    auto grads = ps.zeros_like();
    grads.add("gamma", {4, 4});
    mega::BackwardArgs<double> g;
    g.x = host_view(x, {B, L, D});
    g.dout = host_view(x, {B, L, D});
    g.dx = host_view(dx, {B, L, D});
    contains(mega::cpu::backward(c, ps, g, grads).message(), "grads: tensor 'gamma' has shape [4, 4], expected [4, 8]");
    g.dx = TensorView<double>{};
    contains(mega::cpu::backward(c, ps, g, grads).message(), "dx is missing");
    // The block names its parameters with the sublayer prefix.
    auto bp = block::make_parameters(c);
    bp.add("nffn.fc2.weight", {6, 8});
    mega::ForwardArgs<double> f = args();
    contains(block::cpu::forward(c, bp, f).message(), "params: tensor 'nffn.fc2.weight' has shape [6, 8], expected [8, 6]");
    auto np = nffn::make_parameters(c);
    nffn::ForwardArgs<double> nf;
    nf.x = host_view(x, {B, L, D});
    contains(nffn::cpu::forward(c, np, nf).message(), "out is missing");
  }
  SUBCASE("backward of a call inside a chunk once the stream has a memory is refused") {
    mega::State s;
    REQUIRE(msg(args(), &s).empty());
    auto grads = ps.zeros_like();
    mega::BackwardArgs<double> g;
    g.x = host_view(x, {B, 1, D});
    g.dout = host_view(x, {B, 1, D});
    g.dx = host_view(dx, {B, 1, D});
    const Status st = mega::cpu::backward(c, ps, g, grads, &s);
    CHECK(st.code() == StatusCode::kUnsupported);
    contains(st.message(), "the working memory has no backward for a call inside a chunk");
  }
}
