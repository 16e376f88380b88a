// CPU kernels for decoding, as XLA FFI custom calls (hmx_jax/kernels/cpu.py).
//
// HmxPackedMatmul: y[M, N] = x[M, K] @ W[K, N] where W is stored "packed":
// panels of 32 output columns, each panel a contiguous [K, 32] block, and
// several such matrices (the layers of a model) stacked: w[L, P, K, 32] with
// P = N / 32. The `layer` operand picks one matrix, so a layer scan reads the
// stacked weights in place instead of copying a slice per layer.
//
// With few rows (decoding: one token per sequence) a matmul streams its
// weights once and does 2 * M flops per weight, so it is bound by memory
// bandwidth. Each panel is read front to back, once, while the rows' partial
// sums stay in registers (up to 8 rows x 32 columns at a time); panels are
// shared between the calling thread and XLA's intra-op thread pool.
//
// HmxPack: the packing, [L, K, N] (or [L, N, K]) -> [L, P, K, 32].
//
// HmxDecodeAttention: attention of one new token per row over one layer of
// the stacked KV cache, read in place.
//
// The source is compiled on first use for the machine it runs on; GCC vector
// extensions become AVX-512, AVX2 or NEON code as the host allows.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 32;  // Output columns per panel.

// The host's vector registers: kVec floats each, kRegs of them. A vector
// type wider than the hardware's is lowered through the stack, so the panel
// row is split into kChunks native vectors.
#if defined(__AVX512F__)
constexpr int kVec = 16, kRegs = 32;
#elif defined(__AVX__)
constexpr int kVec = 8, kRegs = 16;
#elif defined(__aarch64__)
constexpr int kVec = 4, kRegs = 32;
#else
constexpr int kVec = 4, kRegs = 16;
#endif
constexpr int kChunks = kLanes / kVec;
// Rows whose partial sums stay in registers (kChunks each), leaving one
// for the weight vector and one per row for its broadcast x value: 8 rows on
// AVX-512, 3 on AVX2 and NEON. Further rows read the panel again, from cache.
constexpr int kMaxRows = std::min(8, (kRegs - 1) / (kChunks + 1));

typedef float vec __attribute__((vector_size(kVec * sizeof(float)),
                                 aligned(4)));

// y[r, 0:32] = x[r, :] @ panel for R rows; x rows have stride K, y rows ldy.
template <int R>
void PanelRows(const float* x, int64_t K, const float* panel, float* y,
               int64_t ldy) {
  // Fully unrolled, so that `acc` lives in registers.
  vec acc[R][kChunks];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kChunks; ++j) acc[r][j] = vec{};
  }
  const float* w = panel;
  for (int64_t k = 0; k < K; ++k, w += kLanes) {
#pragma GCC unroll 8
    for (int j = 0; j < kChunks; ++j) {
      // `vec` is 4-byte aligned: an unaligned load.
      const vec wj = *reinterpret_cast<const vec*>(w + j * kVec);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][j] += x[r * K + k] * wj;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kChunks; ++j) {
      *reinterpret_cast<vec*>(y + r * ldy + j * kVec) = acc[r][j];
    }
  }
}

void Panel(const float* x, int64_t M, int64_t K, const float* panel,
           float* y, int64_t ldy) {
  for (int64_t m = 0; m < M; m += kMaxRows) {
    const float* xm = x + m * K;
    float* ym = y + m * ldy;
    switch (std::min<int64_t>(kMaxRows, M - m)) {
      case 1: PanelRows<1>(xm, K, panel, ym, ldy); break;
      case 2: PanelRows<2>(xm, K, panel, ym, ldy); break;
      case 3: PanelRows<3>(xm, K, panel, ym, ldy); break;
      case 4: PanelRows<4>(xm, K, panel, ym, ldy); break;
      case 5: PanelRows<5>(xm, K, panel, ym, ldy); break;
      case 6: PanelRows<6>(xm, K, panel, ym, ldy); break;
      case 7: PanelRows<7>(xm, K, panel, ym, ldy); break;
      default: PanelRows<kMaxRows>(xm, K, panel, ym, ldy); break;
    }
  }
}

// Runs fn(i) for i in [0, n) on the calling thread and the pool's threads.
// Items are claimed one at a time; the state is shared so that a helper that
// starts late finds no work and touches nothing after the call has returned.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    State(Fn fn, int64_t n) : fn(std::move(fn)), n(n) {}
    Fn fn;
    int64_t n;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    void Run() {
      int64_t i;
      while ((i = next.fetch_add(1, std::memory_order_relaxed)) < n) {
        fn(i);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>(std::move(fn), n);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([state] { state->Run(); });
  }
  state->Run();
  while (state->done.load(std::memory_order_acquire) < n) {
    std::this_thread::yield();
  }
}

ffi::Error PackedMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> w,
                            ffi::Buffer<ffi::S32> layer,
                            ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 4 || wd[3] != kLanes) {
    return ffi::Error::InvalidArgument(
        "packed_matmul: expected x [M, K] and w [L, P, K, 32]");
  }
  const int64_t M = xd[0], K = xd[1], L = wd[0], P = wd[1];
  if (wd[2] != K) {
    return ffi::Error::InvalidArgument(
        "packed_matmul: x and w disagree on K");
  }
  const int64_t l = layer.typed_data()[0];
  if (l < 0 || l >= L) {
    return ffi::Error::InvalidArgument("packed_matmul: layer out of range");
  }
  const float* xp = x.typed_data();
  const float* wp = w.typed_data() + l * P * K * kLanes;
  float* yp = y->typed_data();
  ParallelFor(pool, P, [=](int64_t p) {
    Panel(xp, M, K, wp + p * K * kLanes, yp + p * kLanes, P * kLanes);
  });
  return ffi::Error::Success();
}

// w [L, K, N] (or [L, N, K] with `transposed`) -> panels [L, P, K, 32],
// columns past N zero.
ffi::Error PackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                    ffi::ResultBuffer<ffi::F32> out, bool transposed) {
  auto wd = w.dimensions();
  auto od = out->dimensions();
  if (wd.size() != 3 || od.size() != 4 || od[3] != kLanes) {
    return ffi::Error::InvalidArgument(
        "pack: expected w [L, K, N] and out [L, P, K, 32]");
  }
  const int64_t L = wd[0];
  const int64_t K = transposed ? wd[2] : wd[1];
  const int64_t N = transposed ? wd[1] : wd[2];
  const int64_t P = od[1];
  if (od[0] != L || od[2] != K || P * kLanes < N) {
    return ffi::Error::InvalidArgument("pack: output shape mismatch");
  }
  const float* src = w.typed_data();
  float* dst = out->typed_data();
  ParallelFor(pool, L * P, [=](int64_t i) {
    const int64_t l = i / P, p = i % P;
    const int64_t n0 = p * kLanes;
    const int64_t width = std::min<int64_t>(kLanes, N - n0);
    const float* s = src + l * K * N;
    float* d = dst + i * K * kLanes;
    std::memset(d, 0, sizeof(float) * K * kLanes);
    if (!transposed) {
      for (int64_t k = 0; k < K; ++k) {
        std::memcpy(d + k * kLanes, s + k * N + n0, sizeof(float) * width);
      }
    } else {
      for (int64_t j = 0; j < width; ++j) {
        const float* row = s + (n0 + j) * K;
        for (int64_t k = 0; k < K; ++k) d[k * kLanes + j] = row[k];
      }
    }
  });
  return ffi::Error::Success();
}

// One decoding step of attention for one new token per row, reading layer
// `layer` of the stacked cache in place. For each (row b, kv head h), the G
// query heads of the group attend over the allowed cache slots and the new
// token's own key: logits q.k * scale (soft-capped when softcap > 0), masked
// slots excluded, one softmax over both key sets.
ffi::Error DecodeAttentionImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k_new,
    ffi::Buffer<ffi::F32> v_new, ffi::Buffer<ffi::F32> cache_k,
    ffi::Buffer<ffi::F32> cache_v, ffi::Buffer<ffi::S32> layer,
    ffi::Buffer<ffi::PRED> allowed, ffi::ResultBuffer<ffi::F32> out,
    float scale, float softcap) {
  auto qd = q.dimensions();
  auto cd = cache_k.dimensions();
  if (qd.size() != 4 || cd.size() != 5) {
    return ffi::Error::InvalidArgument(
        "decode_attention: expected q [B, K, G, D], cache [L, B, K, S, D]");
  }
  const int64_t B = qd[0], H = qd[1], G = qd[2], D = qd[3];
  const int64_t L = cd[0], S = cd[3];
  if (cd[1] != B || cd[2] != H || cd[4] != D ||
      allowed.dimensions().size() != 2 || allowed.dimensions()[1] != S) {
    return ffi::Error::InvalidArgument("decode_attention: shape mismatch");
  }
  const int64_t l = layer.typed_data()[0];
  if (l < 0 || l >= L) {
    return ffi::Error::InvalidArgument("decode_attention: layer out of range");
  }
  const float* qp = q.typed_data();
  const float* knp = k_new.typed_data();
  const float* vnp = v_new.typed_data();
  const float* ckp = cache_k.typed_data() + l * B * H * S * D;
  const float* cvp = cache_v.typed_data() + l * B * H * S * D;
  const bool* ap = allowed.typed_data();
  float* op = out->typed_data();
  auto logit = [=](const float* a, const float* b) {
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += a[d] * b[d];
    dot *= scale;
    return softcap > 0.f ? std::tanh(dot / softcap) * softcap : dot;
  };
  ParallelFor(pool, B * H, [=](int64_t i) {
    const int64_t b = i / H;
    const float* qi = qp + i * G * D;
    const float* ki = ckp + i * S * D;
    const float* vi = cvp + i * S * D;
    const bool* ai = ap + b * S;
    // probs[g * (S + 1) + s]; slot S is the new token.
    std::vector<float> probs(G * (S + 1));
    for (int64_t g = 0; g < G; ++g) {
      float* pg = probs.data() + g * (S + 1);
      float top = pg[S] = logit(qi + g * D, knp + i * D);
      for (int64_t s = 0; s < S; ++s) {
        if (ai[s]) {
          pg[s] = logit(qi + g * D, ki + s * D);
          top = std::max(top, pg[s]);
        }
      }
      float total = 0.f;
      for (int64_t s = 0; s <= S; ++s) {
        pg[s] = (s == S || ai[s]) ? std::exp(pg[s] - top) : 0.f;
        total += pg[s];
      }
      const float inv = 1.f / total;
      for (int64_t s = 0; s <= S; ++s) pg[s] *= inv;
    }
    float* oi = op + i * G * D;
    for (int64_t g = 0; g < G; ++g) {
      const float* pg = probs.data() + g * (S + 1);
      float* o = oi + g * D;
      const float* vn = vnp + i * D;
      for (int64_t d = 0; d < D; ++d) o[d] = pg[S] * vn[d];
      for (int64_t s = 0; s < S; ++s) {
        if (!ai[s]) continue;
        const float p = pg[s];
        const float* v = vi + s * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * v[d];
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HmxPackedMatmul, PackedMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HmxPack, PackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HmxDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("softcap"));
