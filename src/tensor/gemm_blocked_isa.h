// engram's cache-blocked GEMM kernel for one instruction set (no include guard on purpose).
//
// gemm.cpp includes this file once per instruction set, each time inside
// `#pragma GCC target(...)` and with
//   ENGRAM_GEMM_ISA           the namespace to define (generic, avx2, avx512),
//   ENGRAM_GEMM_VECTOR_BYTES  the SIMD register width in bytes (16, 32, 64),
// so one source yields one kernel per instruction set, chosen at run time. Everything defined
// here lives in that namespace; nothing here instantiates templates declared elsewhere (an
// instantiation would be shared between instruction sets).
//
// The loops follow BLIS (Van Zee & van de Geijn), transposed for row-major C:
//   for ic (MC rows of A, packed into MR-row micro-panels: kept in L3)
//    for pc (KC of the k dimension)
//     for jc (NC columns of B, packed into NR-column micro-panels: kept in L2)
//      for ir (one MR x KC micro-panel of A: kept in L1)
//       for jr (stream NR x KC micro-panels of B from L2)
//        micro-kernel: an MR x NR tile of C held in registers, KC rank-1 updates.
// The micro-kernel is written with GCC vector extensions: MR x (NR / lanes) accumulators, each
// k step loads NR / lanes vectors of B and broadcasts MR values of A into fused multiply-adds.

#include <cstdint>
#include <cstring>

#include "gemm_problem.h"

#ifndef ENGRAM_GEMM_ISA
#error "define ENGRAM_GEMM_ISA and ENGRAM_GEMM_VECTOR_BYTES before including gemm_blocked_isa.h"
#endif

namespace engram::gemm_detail::ENGRAM_GEMM_ISA {

constexpr int kVectorBytes = ENGRAM_GEMM_VECTOR_BYTES;

// Register and cache blocking. MR x NR accumulators fill most of the vector registers (32 with
// AVX-512, 16 otherwise) leaving room for the B vectors and one broadcast; an A micro-panel
// (MR x KC) fits L1 beside the streamed B lines, a packed B block (KC x NC) fits L2, a packed A
// block (MC x KC) the shared L3.
struct Blocking {
  int mr, nr, kc, nc, mc;
};
template <class T>
struct BlockingOf;
#if ENGRAM_GEMM_VECTOR_BYTES == 64
template <>
struct BlockingOf<float> {
  static constexpr Blocking value{12, 32, 384, 480, 3072};  // 24 zmm accumulators
};
template <>
struct BlockingOf<double> {
  static constexpr Blocking value{12, 16, 256, 480, 2048};
};
#elif ENGRAM_GEMM_VECTOR_BYTES == 32
template <>
struct BlockingOf<float> {
  static constexpr Blocking value{6, 16, 256, 512, 2048};  // 12 ymm accumulators
};
template <>
struct BlockingOf<double> {
  static constexpr Blocking value{6, 8, 256, 512, 1024};
};
#else
template <>
struct BlockingOf<float> {
  static constexpr Blocking value{6, 8, 256, 512, 1024};  // 12 xmm accumulators
};
template <>
struct BlockingOf<double> {
  static constexpr Blocking value{6, 4, 256, 512, 1024};
};
#endif

template <class T>
struct VectorOf;
template <>
struct VectorOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VectorOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
inline int64_t round_up(int64_t x, int64_t to) {
  return (x + to - 1) / to * to;
}
// Splits `total` into ceil(total / max_block) near-equal blocks, each a multiple of `unit`.
inline int64_t even_block(int64_t total, int64_t max_block, int64_t unit) {
  const int64_t blocks = (total + max_block - 1) / max_block;
  return round_up((total + blocks - 1) / blocks, unit);
}

// Packs op(A)[i0 : i0+mc, p0 : p0+kc] into MR-row micro-panels: panel q holds rows q*MR.. as
// dst[q*MR*kc + p*MR + i]. Rows past mc are zero.
template <class T, int MR>
void pack_a(const GemmProblem<T>& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
            T* __restrict dst) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t rows = min64(MR, mc - ir);
    T* __restrict d = dst + ir * kc;
    if (g.ta == Trans::kNo) {  // A(i, p) = a[i*lda + p]: MR row streams
      const T* s = g.a + (i0 + ir) * g.lda + p0;
      const int64_t lda = g.lda;
      if (rows == MR) {
        for (int64_t p = 0; p < kc; ++p) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) d[p * MR + i] = s[i * lda + p];
        }
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          for (int i = 0; i < MR; ++i) d[p * MR + i] = i < rows ? s[i * lda + p] : T(0);
        }
      }
    } else {  // A(i, p) = a[p*lda + i]: each k step is a contiguous run of MR
      const T* s = g.a + p0 * g.lda + i0 + ir;
      for (int64_t p = 0; p < kc; ++p) {
        const T* sp = s + p * g.lda;
        if (rows == MR) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) d[p * MR + i] = sp[i];
        } else {
          for (int i = 0; i < MR; ++i) d[p * MR + i] = i < rows ? sp[i] : T(0);
        }
      }
    }
  }
}

// Packs op(B)[p0 : p0+kc, j0 : j0+nc] into NR-column micro-panels: panel q holds columns
// q*NR.. as dst[q*NR*kc + p*NR + j]. Columns past nc are zero.
template <class T, int NR>
void pack_b(const GemmProblem<T>& g, int64_t p0, int64_t kc, int64_t j0, int64_t nc,
            T* __restrict dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int64_t cols = min64(NR, nc - jr);
    T* __restrict d = dst + jr * kc;
    if (g.tb == Trans::kNo) {  // B(p, j) = b[p*ldb + j]: each k step is a contiguous run of NR
      const T* s = g.b + p0 * g.ldb + j0 + jr;
      for (int64_t p = 0; p < kc; ++p) {
        const T* sp = s + p * g.ldb;
        if (cols == NR) {
#pragma GCC unroll 4
          for (int j = 0; j < NR; ++j) d[p * NR + j] = sp[j];
        } else {
          for (int j = 0; j < NR; ++j) d[p * NR + j] = j < cols ? sp[j] : T(0);
        }
      }
    } else {  // B(p, j) = b[j*ldb + p]: NR column streams
      const T* s = g.b + (j0 + jr) * g.ldb + p0;
      const int64_t ldb = g.ldb;
      if (cols == NR) {
        for (int64_t p = 0; p < kc; ++p) {
#pragma GCC unroll 4
          for (int j = 0; j < NR; ++j) d[p * NR + j] = s[j * ldb + p];
        }
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          for (int j = 0; j < NR; ++j) d[p * NR + j] = j < cols ? s[j * ldb + p] : T(0);
        }
      }
    }
  }
}

// C[0:mr, 0:nr] = alpha * Apanel * Bpanel + beta * C (C not read when beta == 0), where the
// panels are packed MR x kc and kc x NR; mr <= MR, nr <= NR.
template <class T, int MR, int NR>
[[gnu::always_inline]] inline void micro_kernel(int64_t kc, const T* __restrict a,
                                                const T* __restrict b, T alpha, T beta,
                                                T* __restrict c, int64_t ldc, int64_t mr,
                                                int64_t nr) {
  using V = typename VectorOf<T>::type;
  constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  constexpr int kNv = NR / kLanes;
  static_assert(NR % kLanes == 0);

  V acc[MR][kNv];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v < kNv; ++v) acc[i][v] = V{};
  }
  for (int64_t p = 0; p < kc; ++p) {
    const V* bp = reinterpret_cast<const V*>(b + p * NR);  // packed panels are 64-byte aligned
    V bv[kNv];
#pragma GCC unroll 8
    for (int v = 0; v < kNv; ++v) bv[v] = bp[v];
    const T* ap = a + p * MR;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = ap[i] - V{};  // broadcast (x - 0 folds away; x + 0 would not, for -0)
#pragma GCC unroll 8
      for (int v = 0; v < kNv; ++v) acc[i][v] += ai * bv[v];
    }
  }

  if (mr == MR && nr == NR) {
    if (beta == T(0)) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
        for (int v = 0; v < kNv; ++v) {
          const V r = alpha * acc[i][v];
          std::memcpy(c + i * ldc + v * kLanes, &r, sizeof(V));
        }
      }
    } else {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
        for (int v = 0; v < kNv; ++v) {
          V old;
          std::memcpy(&old, c + i * ldc + v * kLanes, sizeof(V));
          const V r = alpha * acc[i][v] + beta * old;
          std::memcpy(c + i * ldc + v * kLanes, &r, sizeof(V));
        }
      }
    }
    return;
  }
  // Edge tile: computed in full (the packed panels are zero-padded), stored in part.
  alignas(64) T tile[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v < kNv; ++v) std::memcpy(tile + i * NR + v * kLanes, &acc[i][v], sizeof(V));
  }
  for (int64_t i = 0; i < mr; ++i) {
    T* ci = c + i * ldc;
    const T* ti = tile + i * NR;
    if (beta == T(0)) {
      for (int64_t j = 0; j < nr; ++j) ci[j] = alpha * ti[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = alpha * ti[j] + beta * ci[j];
    }
  }
}

// The rows [i0, i1) and columns [j0, j1) of C, on the calling thread. Requires k > 0.
template <class T>
void blocked_tile_impl(const GemmProblem<T>& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr Blocking kB = BlockingOf<T>::value;
  constexpr int MR = kB.mr, NR = kB.nr;
  if (i0 >= i1 || j0 >= j1) return;
  const int64_t kc_max = even_block(g.k, kB.kc, 1);
  const int64_t mc_max = even_block(i1 - i0, kB.mc, MR);
  const int64_t nc_max = even_block(j1 - j0, kB.nc, NR);
  T* abuf = static_cast<T*>(scratch(0, static_cast<size_t>(mc_max * kc_max) * sizeof(T)));
  T* bbuf = static_cast<T*>(scratch(1, static_cast<size_t>(nc_max * kc_max) * sizeof(T)));

  for (int64_t ic = i0; ic < i1; ic += mc_max) {
    const int64_t mc = min64(mc_max, i1 - ic);
    for (int64_t pc = 0; pc < g.k; pc += kc_max) {
      const int64_t kc = min64(kc_max, g.k - pc);
      const T beta = pc == 0 ? g.beta : T(1);  // later k blocks accumulate
      pack_a<T, MR>(g, ic, mc, pc, kc, abuf);
      for (int64_t jc = j0; jc < j1; jc += nc_max) {
        const int64_t nc = min64(nc_max, j1 - jc);
        pack_b<T, NR>(g, pc, kc, jc, nc, bbuf);
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const T* ap = abuf + ir * kc;
          T* crow = g.c + (ic + ir) * g.ldc + jc;
          const int64_t mr = min64(MR, mc - ir);
          for (int64_t jr = 0; jr < nc; jr += NR) {
            micro_kernel<T, MR, NR>(kc, ap, bbuf + jr * kc, g.alpha, beta, crow + jr, g.ldc, mr,
                                    min64(NR, nc - jr));
          }
        }
      }
    }
  }
}

// ---- Thin problems: m <= kThinRows ------------------------------------------------------------
// With a handful of rows (a decoding step, one token) the product is bound by reading B once;
// packing B would double that traffic. These loops stream B in storage order instead.

// op(B) = B, rows of B contiguous: for each k step, C rows += a(i, p) * B[p, :], accumulated
// over a chunk of columns kept in cache.
template <class T, int M>
void thin_axpy(const GemmProblem<T>& g, int64_t j0, int64_t j1) {
  constexpr int64_t kChunk = 8192 / static_cast<int64_t>(sizeof(T));  // 8 KiB per row of C
  T* acc = static_cast<T*>(scratch(1, static_cast<size_t>(M * kChunk) * sizeof(T)));
  for (int64_t jc = j0; jc < j1; jc += kChunk) {
    const int64_t w = min64(kChunk, j1 - jc);
    for (int64_t x = 0; x < M * kChunk; ++x) acc[x] = T(0);
    for (int64_t p = 0; p < g.k; ++p) {
      const T* __restrict brow = g.b + p * g.ldb + jc;
      T a_ip[M];
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        a_ip[i] = g.ta == Trans::kNo ? g.a[i * g.lda + p] : g.a[p * g.lda + i];
      }
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        T* __restrict acc_i = acc + i * kChunk;
        const T ai = a_ip[i];
        for (int64_t j = 0; j < w; ++j) acc_i[j] += ai * brow[j];
      }
    }
    for (int i = 0; i < M; ++i) {
      T* ci = g.c + i * g.ldc + jc;
      const T* acc_i = acc + i * kChunk;
      if (g.beta == T(0)) {
        for (int64_t j = 0; j < w; ++j) ci[j] = g.alpha * acc_i[j];
      } else {
        for (int64_t j = 0; j < w; ++j) ci[j] = g.alpha * acc_i[j] + g.beta * ci[j];
      }
    }
  }
}

// op(B) = B^T, B stored (n, k): every C element is a dot product of two contiguous rows; four
// columns at a time share the loads of A.
template <class T, int M>
void thin_dot(const GemmProblem<T>& g, int64_t j0, int64_t j1) {
  using V = typename VectorOf<T>::type;
  constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  constexpr int kCols = 4;
  const int64_t k = g.k;
  // Rows of op(A), contiguous: A itself, or a gathered copy when A is stored transposed.
  const T* arows = g.a;
  int64_t lda = g.lda;
  if (g.ta == Trans::kYes) {
    T* copy = static_cast<T*>(scratch(0, static_cast<size_t>(M * k) * sizeof(T)));
    for (int64_t p = 0; p < k; ++p) {
      for (int i = 0; i < M; ++i) copy[i * k + p] = g.a[p * g.lda + i];
    }
    arows = copy;
    lda = k;
  }
  const int64_t k_vec = k / kLanes * kLanes;
  auto store = [&](int i, int64_t j, T sum) {
    T& cij = g.c[i * g.ldc + j];
    cij = g.beta == T(0) ? g.alpha * sum : g.alpha * sum + g.beta * cij;
  };
  int64_t j = j0;
  for (; j + kCols <= j1; j += kCols) {
    V acc[M][kCols];
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
      for (int c = 0; c < kCols; ++c) acc[i][c] = V{};
    }
    const T* bcol[kCols];
    for (int c = 0; c < kCols; ++c) bcol[c] = g.b + (j + c) * g.ldb;
    for (int64_t p = 0; p < k_vec; p += kLanes) {
      V bv[kCols];
#pragma GCC unroll 4
      for (int c = 0; c < kCols; ++c) std::memcpy(&bv[c], bcol[c] + p, sizeof(V));
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        V av;
        std::memcpy(&av, arows + i * lda + p, sizeof(V));
#pragma GCC unroll 4
        for (int c = 0; c < kCols; ++c) acc[i][c] += av * bv[c];
      }
    }
    for (int i = 0; i < M; ++i) {
      for (int c = 0; c < kCols; ++c) {
        T sum = 0;
        for (int l = 0; l < kLanes; ++l) sum += acc[i][c][l];
        for (int64_t p = k_vec; p < k; ++p) sum += arows[i * lda + p] * bcol[c][p];
        store(i, j + c, sum);
      }
    }
  }
  for (; j < j1; ++j) {
    const T* bj = g.b + j * g.ldb;
    for (int i = 0; i < M; ++i) {
      V acc = V{};
      for (int64_t p = 0; p < k_vec; p += kLanes) {
        V av, bv;
        std::memcpy(&av, arows + i * lda + p, sizeof(V));
        std::memcpy(&bv, bj + p, sizeof(V));
        acc += av * bv;
      }
      T sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += acc[l];
      for (int64_t p = k_vec; p < k; ++p) sum += arows[i * lda + p] * bj[p];
      store(i, j, sum);
    }
  }
}

template <class T, int M>
void thin_rows_m(const GemmProblem<T>& g, int64_t j0, int64_t j1) {
  if (g.tb == Trans::kNo) {
    thin_axpy<T, M>(g, j0, j1);
  } else {
    thin_dot<T, M>(g, j0, j1);
  }
}

// All m <= kThinRows rows of C, columns [j0, j1), on the calling thread. Requires k > 0.
template <class T>
void thin_rows_impl(const GemmProblem<T>& g, int64_t j0, int64_t j1) {
  switch (g.m) {
    case 1:
      thin_rows_m<T, 1>(g, j0, j1);
      break;
    case 2:
      thin_rows_m<T, 2>(g, j0, j1);
      break;
    case 3:
      thin_rows_m<T, 3>(g, j0, j1);
      break;
    case 4:
      thin_rows_m<T, 4>(g, j0, j1);
      break;
    default:
      break;  // callers send only 1..kThinRows rows
  }
}

void thin_rows(const GemmProblem<float>& g, int64_t j0, int64_t j1) {
  thin_rows_impl<float>(g, j0, j1);
}
void thin_rows(const GemmProblem<double>& g, int64_t j0, int64_t j1) {
  thin_rows_impl<double>(g, j0, j1);
}

void blocked_tile(const GemmProblem<float>& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  blocked_tile_impl<float>(g, i0, i1, j0, j1);
}
void blocked_tile(const GemmProblem<double>& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  blocked_tile_impl<double>(g, i0, i1, j0, j1);
}

}  // namespace engram::gemm_detail::ENGRAM_GEMM_ISA
