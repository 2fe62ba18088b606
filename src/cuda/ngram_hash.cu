// GPU n-gram hashing: the kernel and its launcher (src/cuda/ngram_hash_kernel.h). The class
// over it is src/cuda/ngram_hash.cpp.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/check.h"
#include "cuda/ngram_hash_kernel.h"

namespace engram::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSplit = kModSplit;
constexpr int kConstsPerPrime = kModConstsPerPrime;

// x floor-mod p, exact for every int64 x (the proof is in src/hash/fast_mod.h): every
// intermediate is an integer below 2^53 held exactly in a double, and only the quotient q is
// estimated, to floor(v / p) or one more, which the final correction absorbs. c = (p, 1/p,
// 2^42 mod p).
__device__ __forceinline__ int32_t floor_mod(int64_t x, const double* c) {
  const double p = __ldg(c), inv = __ldg(c + 1), split = __ldg(c + 2);
  const double t = static_cast<double>(x >> kSplit);                       // |t| <= 2^21
  const double b = static_cast<double>(x & ((int64_t{1} << kSplit) - 1));  // < 2^42
  const double v = __fma_rn(t, split, b);  // = x (mod p), |v| < 2^53: exact
  const double q = rint(__dmul_rn(v, inv));
  const double r = __fma_rn(-q, p, v);  // an integer in [-p, p): exact
  return static_cast<int32_t>(r < 0.0 ? r + p : r);
}

// One thread per (layer, token, order n): mix_n = XOR_{k<n} s_k * m_k, then its K head ids.
// Items are numbered in output order, so item i writes out[i*K .. i*K+K) and neighbouring
// threads write neighbouring bytes. kHeads > 0 fixes K (a multiple of 4: 16-byte stores).
template <int kHeads>
__global__ void __launch_bounds__(kThreads) hash_kernel(NgramHashArgs a) {
  const int orders = a.max_n - 1;
  const int heads = kHeads > 0 ? kHeads : a.heads;
  const int64_t items = a.layers * a.tokens * orders;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const int order = static_cast<int>(i % orders);  // n = order + 2
    const int64_t layer_token = i / orders;
    const int64_t token = layer_token % a.tokens;
    const int64_t layer = layer_token / a.tokens;
    const int64_t pos = token % a.seq;  // position in the row: look-backs past it read pad'
    const uint64_t* m = a.mult + layer * a.max_n;

    // An id outside [0, vocab) that is not the dead id breaks the precondition: it is never
    // used as an index, and the order's ids become -1.
    bool bad = false;
    const int64_t id0 = a.ids[token];
    int64_t s0 = 0;
    if (a.dead_rule && id0 == a.dead_id) {
      s0 = id0;  // a dead position's own s_0 is the dead id, uncompressed
    } else if (static_cast<uint64_t>(id0) < static_cast<uint64_t>(a.vocab)) {
      s0 = __ldg(a.lut + id0);
    } else {
      bad = true;
    }
    uint64_t mix = static_cast<uint64_t>(s0) * __ldg(m);
    bool dead_seen = false;  // a look-back reaching or crossing a dead position reads pad'
    for (int k = 1; k < order + 2; ++k) {
      int64_t sk = a.pad;
      if (k <= pos && !dead_seen) {
        const int64_t id = a.ids[token - k];
        if (a.dead_rule && id == a.dead_id) {
          dead_seen = true;
        } else if (static_cast<uint64_t>(id) < static_cast<uint64_t>(a.vocab)) {
          sk = __ldg(a.lut + id);
        } else {
          bad = true;
        }
      }
      mix ^= static_cast<uint64_t>(sk) * __ldg(m + k);
    }

    const double* c = a.consts + ((layer * orders + order) * heads) * kConstsPerPrime;
    int32_t* o = a.out + i * heads;
    const int64_t x = static_cast<int64_t>(mix);
    if constexpr (kHeads > 0) {
      int32_t z[kHeads];
#pragma unroll
      for (int j = 0; j < kHeads; ++j) z[j] = bad ? -1 : floor_mod(x, c + j * kConstsPerPrime);
#pragma unroll
      for (int j = 0; j < kHeads; j += 4) {
        *reinterpret_cast<int4*>(o + j) = make_int4(z[j], z[j + 1], z[j + 2], z[j + 3]);
      }
    } else {
      for (int j = 0; j < heads; ++j) o[j] = bad ? -1 : floor_mod(x, c + j * kConstsPerPrime);
    }
  }
}

}  // namespace

void launch_ngram_hash(const NgramHashArgs& args, void* stream) {
  const int64_t items = args.layers * args.tokens * (args.max_n - 1);
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, INT32_MAX));
  const auto s = static_cast<cudaStream_t>(stream);
  const bool aligned = reinterpret_cast<uintptr_t>(args.out) % 16 == 0;
  if (aligned && args.heads == 8) {
    hash_kernel<8><<<blocks, kThreads, 0, s>>>(args);
  } else if (aligned && args.heads == 16) {
    hash_kernel<16><<<blocks, kThreads, 0, s>>>(args);
  } else {
    hash_kernel<0><<<blocks, kThreads, 0, s>>>(args);
  }
  ENGRAM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engram::cuda
