// Causal attention on the GPU (include/engram/cuda/attention.h): argument checks here; the
// kernels are in src/cuda/attention.cu. src/cuda/attention_stub.cpp stands in for both in
// builds without CUDA.
#include "engram/cuda/attention.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "cuda/attention_kernel.h"
#include "engram/util/error.h"

namespace engram::cuda {
namespace {

[[noreturn]] void bad(const char* where, const std::string& what) {
  throw InputError(error_message(where, what));
}

// Checks everything the kernels rely on; returns false when there is nothing to do.
bool check(const char* where, DType type, const FlashAttentionShape& s, float scale) {
  const std::pair<const char*, int64_t> sizes[] = {{"batch", s.batch},
                                                   {"seq", s.seq},
                                                   {"heads", s.heads},
                                                   {"kv_heads", s.kv_heads},
                                                   {"head_dim", s.head_dim}};
  for (const auto& [name, value] : sizes) {
    if (value < 0) bad(where, std::string(name) + " " + std::to_string(value) + " (expected >= 0)");
  }
  if (s.kv_heads < 1 || s.heads % s.kv_heads != 0) {
    bad(where, "kv_heads " + std::to_string(s.kv_heads) + " does not divide heads " +
                   std::to_string(s.heads));
  }
  if (s.head_dim != 64 && s.head_dim != 128) {
    bad(where, "head_dim " + std::to_string(s.head_dim) + " (supported: 64, 128)");
  }
  if (type != DType::kF32 && type != DType::kBF16) {
    bad(where, "element type " + std::string(dtype_name(type)) + " (expected F32 or BF16)");
  }
  if (!std::isfinite(scale)) bad(where, "scale " + std::to_string(scale) + " is not finite");
  // The kernels index rows, tiles and chunks with int32 grid coordinates.
  if (s.seq > (int64_t{1} << 30) || s.heads > 65535 || s.batch > 65535) {
    bad(where, "sizes beyond the grid limits (seq " + std::to_string(s.seq) + ", heads " +
                   std::to_string(s.heads) + ", batch " + std::to_string(s.batch) + ")");
  }
  return s.batch > 0 && s.seq > 0 && s.heads > 0;
}

// The kernels move 16 bytes at a time.
void check_aligned(const char* where,
                   std::initializer_list<std::pair<const char*, const void*>> pointers) {
  constexpr uintptr_t align = 16;
  for (const auto& [name, ptr] : pointers) {
    if (reinterpret_cast<uintptr_t>(ptr) % align != 0) {
      bad(where, std::string(name) + " is not aligned to " + std::to_string(align) + " bytes");
    }
  }
}

detail::AttentionDims dims(const FlashAttentionShape& s) {
  return {s.batch, s.seq, s.heads, s.kv_heads, s.head_dim};
}

}  // namespace

void flash_attention_forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
                             DType type, const FlashAttentionShape& shape, float scale,
                             void* stream, AttentionKernel kernel) {
  const char* where = "cuda::flash_attention_forward";
  if (!check(where, type, shape, scale)) return;
  check_aligned(where, {{"ctx", ctx}, {"q", q}, {"k", k}, {"v", v}});
  const bool bf16 = type == DType::kBF16;
  detail::launch_flash_forward(ctx, lse, q, k, v, bf16, bf16 && kernel == AttentionKernel::kAuto,
                               dims(shape), scale, stream);
}

void flash_attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q,
                              const void* k, const void* v, const void* ctx, const float* lse,
                              DType type, const FlashAttentionShape& shape, float scale,
                              void* stream, AttentionKernel kernel) {
  const char* where = "cuda::flash_attention_backward";
  if (!check(where, type, shape, scale)) return;
  check_aligned(where, {{"dq", dq},
                        {"dk", dk},
                        {"dv", dv},
                        {"dctx", dctx},
                        {"q", q},
                        {"k", k},
                        {"v", v},
                        {"ctx", ctx}});
  const bool bf16 = type == DType::kBF16;
  detail::launch_flash_backward(dq, dk, dv, dctx, q, k, v, ctx, lse, bf16,
                                bf16 && kernel == AttentionKernel::kAuto, dims(shape), scale,
                                stream);
}

void attention_decode(void* ctx, const void* q, const void* k_cache, const void* v_cache,
                      const int32_t* lengths, DType type, const FlashAttentionShape& shape,
                      float scale, void* stream) {
  const char* where = "cuda::attention_decode";
  if (!check(where, type, shape, scale)) return;
  check_aligned(where, {{"ctx", ctx}, {"q", q}, {"k_cache", k_cache}, {"v_cache", v_cache}});
  detail::launch_attention_decode(ctx, q, k_cache, v_cache, lengths, type == DType::kBF16,
                                  dims(shape), scale, stream);
}

}  // namespace engram::cuda
