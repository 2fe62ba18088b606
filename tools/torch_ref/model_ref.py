#!/usr/bin/env python3
"""A PyTorch mirror of engram's CPU language model, and the parity check against its dumps.

  model_ref.py DUMP.safetensors [DUMP ...] [--device cuda|cpu] [--json OUT.json] [--verbose]
               [--mutate NAME]

Each DUMP is written by `engram_dump_model` (tools/torch_ref/dump_model.cpp): the parameters
(param.*), MoE biases (buffer.*), inputs, targets, Engram hash ids, and the C++ results: logits,
loss and every gradient (grad.*), sparse ones scattered to dense. This script builds the same
architecture from the config in the dump's metadata, loads the parameters under the same names,
runs forward and backward with torch autograd in the dump's dtype (float32 or float64) and
compares. Per tensor: max relative error = max|a - b| / max(max|b|, tiny), b = torch. PASS iff
every error is <= 1e-4 (float32) or <= 1e-9 (float64). Prints a table per dump and a final JSON
line; exits 1 on any failure. TF32 stays off in torch (the reference is exact FP32/FP64).
A dump made with `engram_dump_model --device cuda` (model::GpuTransformer, float32 only) carries
"device": "cuda" and "math": "exact" | "tf32" in its metadata: the check reports them (per dump
and as dump_device / dump_math in the JSON) and applies the same float32 limit. A tf32 dump's
C++ GEMMs ran on TF32 tensor cores while torch stays exact, so its errors include TF32 rounding
(~1e-3) and are expected to exceed 1e-4. Dumps without the key are CPU dumps.

  model_ref.py bench --config FILE.toml [--threads N] [--steps S] [--warmup W]
                     [--device cpu|cuda] [--dtype f32|tf32|bf16] [--compile]
                     [--attention auto|naive|sdpa] [--peak-tflops P]

bench: PyTorch training throughput of the same model, the baseline for build/bench/bench_train
(tools/bench/train.sh runs both on the CPU, tools/bench/train_gpu.sh on a GPU). Builds the mirror
from the TOML config with float32 parameters (torch.set_num_threads(N)), random init (normal 0.02
matrices, norms 1, mHC as below), and times S training steps after W warm-up steps on random
token batches of train.batch_size x train.seq_len: forward, backward,
clip_grad_norm_(train.grad_clip), torch.optim.AdamW (weight decay on matrices, Engram tables at
engram_lr_multiplier x lr without decay; fused=True on CUDA). Embedding, LM head and Engram tables
are dense parameters updated densely (torch's AdamW has no sparse rows; our trainer's are
sparse). Engram hash ids: a uniform random id per head below that head's prime table size (the
primes of the real hasher; the ids are not real n-gram hashes), no data loader or hashing in the
timing (batches are made and copied to the device before the clock starts).
  --device cuda  the model on the GPU; every timed step is bracketed by torch.cuda.synchronize().
                 Two GPU-only changes of formulation (the same arithmetic): attention through
                 F.scaled_dot_product_attention(is_causal=True) (--attention auto = sdpa on CUDA,
                 the explicit masked softmax on the CPU), and the MoE experts dispatched from one
                 argsort of the (token, slot) choices with one host sync per layer (the bincount)
                 instead of one nonzero per expert, the routed outputs summed by one index_add;
                 the parity statistics (expert loads, top-k margin: host syncs) are not collected.
  --dtype        f32: float32 with IEEE FP32 GEMMs (TF32 off); tf32: float32 with TF32 tensor-core
                 GEMMs and convolutions; bf16: torch.autocast(bfloat16) around forward and loss,
                 float32 master weights, gradients and AdamW (TF32 on for what autocast leaves
                 in float32). tf32 and bf16 need --device cuda.
  --compile      regional torch.compile: every transformer block and the head + loss, each
                 compiled once per distinct structure; the expert dispatch (data-dependent
                 shapes) stays eager (torch.compiler.disable). W defaults to 3 then (compilation
                 of forward and backward happens in the first steps), 1 otherwise.
Prints one JSON line: {"bench": "train_torch", "config", "threads", "torch", "tokens_per_s"
(median over the timed steps), "seconds_per_step" (median), "device", "dtype", "compile",
"flops_per_token", "tflops", "peak_tflops", "mfu", ...}.
Model FLOPs (the formula of engram::model::train_flops_per_token, param_count.h, computed here
from the modules): flops_per_token = 6 * W + 6 * L * T * Hq * hd, W = every parameter but the
embedding, the LM head and the Engram tables, the routed experts counted top_k / E, plus C * V
for the LM head (= P_act - engram_table_active + C V); the second term is causal attention
(QK^T and AV over T/2 keys on average, x3 for backward). MFU = tokens_per_s * flops_per_token /
peak; the peak defaults on CUDA to the NVIDIA H200 SXM datasheet dense figures: 989 TFLOP/s
bf16, 494 tf32 (tensor cores; the datasheet's 1979 / 989 are with 2:4 sparsity), 67 f32; on the
CPU there is none (mfu null) unless --peak-tflops is given.

--mutate NAME deliberately breaks the mirror (a negative control: the check must then FAIL):
  rope_interleaved  RoPE on (2i, 2i+1) pairs instead of (i, i + hd/2)
  sinkhorn_short    one Sinkhorn normalisation step fewer
  moe_unnormalized  MoE gate weights s_i * route_scale without dividing by the selected sum
  engram_no_gate    Engram output without the sigmoid gate (alpha = 1)

The architecture (BACKBONE_SPEC, ENGRAM_SPEC; where the C++ chooses, as src/nn/*.cpp does):
  X = embed[ids] copied to n = hc_mult streams, (N, n, C) with N = B*T tokens
  per layer: X += Engram(X, hash ids)                  (Engram layers only; tools' Engram ref)
             for F in (attention, SwiGLU or MoE):
               n = 1: X = X + F(RMSNorm(X))
               n > 1: pre, post, comb = mHC coefficients(X); y = sum_i pre_i X_i
                      X_k = post_k F(RMSNorm(y)) + sum_j comb[j, k] X_j
  head: z = X (n = 1) or the head read-out (n > 1); logits = RMSNorm(z) head^T;
        loss = mean cross-entropy over targets >= 0.
  RoPE: rotate-half (pairs (i, i + hd/2)), angle t * theta^(-2i/hd), computed in float64.
  MoE:  s = sigmoid(u Wg^T); top-k of s + bias (bias: selection only); w = route_scale *
        s_i / sum_{j in S} s_j; y = shared(u) + sum_{i in S} w_i E_i(u).
  mHC:  r = (mean(v^2) + 1e-6)^-1/2, a = r (Phi v) * alpha_slot + b; pre = sigmoid + 1e-6,
        post = 2 sigmoid, comb = Sinkhorn (row softmax + 1e-6, column step, then 19 x (row,
        column), each dividing by line sum + 1e-6). Head: pre = sigmoid(r (Phi_h v) alpha_h + b_h)
        + 1e-6.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

if not hasattr(nn, "RMSNorm"):  # torch < 2.4 (e.g. Debian's python3-torch 1.13): the same norm
    class _RMSNorm(nn.Module):
        def __init__(self, dim, eps=None):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    nn.RMSNorm = _RMSNorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engram_layer_ref import Engram  # noqa: E402  (the verified reference Engram layer)

MUTATE = set()

HC_EPS = 1e-6          # mHC: rms eps, pre offset, Sinkhorn eps (hyper_connection.cpp)
SINKHORN_ITERS = 20    # softmax + column step, then 19 x (row, column)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


# ---- attention -------------------------------------------------------------------------------

def rope(x, theta):
    """x (B, T, H, hd): rotate each pair (i, i + hd/2) by t * theta^(-2i/hd) (attention.cpp)."""
    B, T, H, hd = x.shape
    half = hd // 2
    i = torch.arange(half, dtype=torch.float64, device=x.device)
    inv_freq = theta ** (-2.0 * i / hd)
    ang = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * inv_freq[None, :]
    cos = ang.cos().to(x.dtype)[None, :, None, :]
    sin = ang.sin().to(x.dtype)[None, :, None, :]
    if "rope_interleaved" in MUTATE:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, C, heads, kv_heads, head_dim, theta):
        super().__init__()
        self.heads, self.kv_heads, self.hd, self.theta = heads, kv_heads, head_dim, theta
        self.sdpa = False  # bench on CUDA: F.scaled_dot_product_attention (the same softmax)
        self.wq = nn.Parameter(torch.empty(heads * head_dim, C))
        self.wk = nn.Parameter(torch.empty(kv_heads * head_dim, C))
        self.wv = nn.Parameter(torch.empty(kv_heads * head_dim, C))
        self.wo = nn.Parameter(torch.empty(C, heads * head_dim))

    def forward(self, h, B, T):  # h (N, C) -> (N, C)
        hd = self.hd
        q = rope((h @ self.wq.T).view(B, T, self.heads, hd), self.theta)
        k = rope((h @ self.wk.T).view(B, T, self.kv_heads, hd), self.theta)
        v = (h @ self.wv.T).view(B, T, self.kv_heads, hd)
        group = self.heads // self.kv_heads  # query head h reads kv head h // group
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if self.sdpa:
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return ctx.transpose(1, 2).reshape(B * T, self.heads * hd) @ self.wo.T
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
        mask = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        ctx = (p @ v).transpose(1, 2).reshape(B * T, self.heads * hd)
        return ctx @ self.wo.T


# ---- FFN and MoE -----------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, C, Fw):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(Fw, C))
        self.w3 = nn.Parameter(torch.empty(Fw, C))
        self.w2 = nn.Parameter(torch.empty(C, Fw))

    def forward(self, u):
        return swiglu(u, self.w1, self.w3, self.w2)


class Moe(nn.Module):
    def __init__(self, C, E, H, top_k, n_shared, route_scale):
        super().__init__()
        self.E, self.top_k, self.route_scale = E, top_k, route_scale
        self.gate = nn.Parameter(torch.empty(E, C))
        self.w1 = nn.Parameter(torch.empty(E, H, C))
        self.w3 = nn.Parameter(torch.empty(E, H, C))
        self.w2 = nn.Parameter(torch.empty(E, C, H))
        self.has_shared = n_shared > 0
        if self.has_shared:
            self.shared_w1 = nn.Parameter(torch.empty(n_shared * H, C))
            self.shared_w3 = nn.Parameter(torch.empty(n_shared * H, C))
            self.shared_w2 = nn.Parameter(torch.empty(C, n_shared * H))
        self.register_buffer("bias", torch.zeros(E))
        self.stats = {}
        self.grouped = False  # bench on CUDA: moe_routed (one sync per layer, no statistics)

    def forward(self, u):  # u (N, C)
        s = torch.sigmoid(u @ self.gate.T)                    # (N, E) router scores
        key = (s + self.bias).detach()                        # selection only, no gradient
        sel = torch.topk(key, self.top_k, dim=-1).indices     # (N, k)
        g = s.gather(1, sel)                                  # unbiased scores of the chosen
        if "moe_unnormalized" in MUTATE:
            w = self.route_scale * g
        else:
            w = self.route_scale * g / g.sum(-1, keepdim=True)
        if self.grouped:
            y = moe_routed(u, sel, w, self.w1, self.w3, self.w2)
            if self.has_shared:
                y = y + swiglu(u, self.shared_w1, self.shared_w3, self.shared_w2)
            return y
        y = swiglu(u, self.shared_w1, self.shared_w3, self.shared_w2) if self.has_shared \
            else torch.zeros_like(u)
        for e in range(self.E):
            tok, slot = (sel == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            out = swiglu(u[tok], self.w1[e], self.w3[e], self.w2[e])
            y = y.index_add(0, tok, w[tok, slot, None] * out)
        # Selection margin: gap between the k-th and (k+1)-th biased score (a near-tie could
        # flip between float implementations).
        srt = key.sort(dim=-1, descending=True).values
        margin = (srt[:, self.top_k - 1] - srt[:, self.top_k]).min().item() if self.top_k < self.E \
            else float("inf")
        self.stats = {"counts": torch.bincount(sel.flatten(), minlength=self.E).cpu(),
                      "margin": margin}
        return y


_no_compile = getattr(getattr(torch, "compiler", None), "disable", lambda f: f)


@_no_compile  # data-dependent shapes: eager under torch.compile
def moe_routed(u, sel, w, w1, w3, w2):
    """sum_{i in S} w_i E_i(u) of every token, the experts' rows gathered from one stable argsort
    of the (token, slot) choices by expert: one host sync (the per-expert counts) per layer and
    one index_add of all routed outputs (at least float32) instead of one per expert."""
    N, k = sel.shape
    E = w1.shape[0]
    flat = sel.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E).tolist()
    tok = order // k
    wt = w.reshape(-1)[order]
    outs, start = [], 0
    for e, c in enumerate(counts):
        if c:
            rows = slice(start, start + c)
            outs.append(swiglu(u[tok[rows]], w1[e], w3[e], w2[e]) * wt[rows, None])
        start += c
    if not outs:
        return torch.zeros(N, u.shape[1], dtype=torch.promote_types(u.dtype, torch.float32),
                           device=u.device)
    routed = torch.cat(outs)
    routed = routed.to(torch.promote_types(routed.dtype, torch.float32))  # bf16 (autocast): f32
    return torch.zeros(N, u.shape[1], dtype=routed.dtype, device=u.device).index_add(0, tok, routed)


# ---- mHC -------------------------------------------------------------------------------------

def sinkhorn(logits):  # (N, n, n) -> (N, n, n), row-major [i, j]
    m = logits.softmax(-1) + HC_EPS
    m = m / (m.sum(-2, keepdim=True) + HC_EPS)                # column step
    iters = SINKHORN_ITERS - 1 - (1 if "sinkhorn_short" in MUTATE else 0)
    for _ in range(iters):
        m = m / (m.sum(-1, keepdim=True) + HC_EPS)            # rows
        m = m / (m.sum(-2, keepdim=True) + HC_EPS)            # columns
    return m


def rms_projection(X, phi):  # X (N, n, C), phi (K, n*C) -> (N, K)
    v = X.reshape(X.shape[0], -1)
    r = torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + HC_EPS)
    return r * (v @ phi.T)


class HcSub(nn.Module):
    """mHC coefficients of one sublayer: phi (n^2+2n, n*C), b (n^2+2n), alpha (3)."""

    def __init__(self, n, C):
        super().__init__()
        self.n = n
        K = n * n + 2 * n
        self.phi = nn.Parameter(torch.empty(K, n * C))
        self.b = nn.Parameter(torch.empty(K))
        self.alpha = nn.Parameter(torch.empty(3))

    def forward(self, X):
        n = self.n
        m = rms_projection(X, self.phi)
        a_scale = torch.cat([self.alpha[0].expand(n), self.alpha[1].expand(n),
                             self.alpha[2].expand(n * n)])
        a = m * a_scale + self.b
        pre = torch.sigmoid(a[:, :n]) + HC_EPS
        post = 2 * torch.sigmoid(a[:, n:2 * n])
        comb = sinkhorn(a[:, 2 * n:].reshape(-1, n, n))
        return pre, post, comb


class HcHead(nn.Module):
    """The read-out before the LM head: phi (n, n*C), b (n), alpha (1), no Sinkhorn."""

    def __init__(self, n, C):
        super().__init__()
        self.phi = nn.Parameter(torch.empty(n, n * C))
        self.b = nn.Parameter(torch.empty(n))
        self.alpha = nn.Parameter(torch.empty(1))

    def forward(self, X):
        pre = torch.sigmoid(rms_projection(X, self.phi) * self.alpha[0] + self.b) + HC_EPS
        return torch.einsum("ni,nic->nc", pre, X)


# ---- the model -------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, cfg, layer, head_sizes):
        super().__init__()
        m = cfg["model"]
        C, n = m["hidden_size"], m["hc_mult"]
        self.n, self.eps = n, m["norm_eps"]
        self.attn_norm = nn.Parameter(torch.empty(C))
        self.attn = Attention(C, m["num_heads"], m["num_kv_heads"], m["head_dim"], m["rope_theta"])
        self.ffn_norm = nn.Parameter(torch.empty(C))
        moe = cfg.get("moe")
        self.is_moe = moe is not None and layer >= m["first_dense_layers"]
        if self.is_moe:
            self.moe = Moe(C, moe["num_experts"], moe["expert_intermediate_size"], moe["top_k"],
                           moe["num_shared_experts"], moe["route_scale"])
        else:
            self.mlp = Mlp(C, m["dense_intermediate_size"])
        if n > 1:
            self.hc_attn = HcSub(n, C)
            self.hc_ffn = HcSub(n, C)
        self.engram = None
        if head_sizes is not None:
            e = cfg["engram"]
            self.engram = Engram(head_sizes, C, n, e["max_ngram_size"], e["n_embed_per_ngram"],
                                 e["n_head_per_ngram"], e["kernel_size"], bias=e["bias"],
                                 short_conv=e["short_conv"])

    def sub(self, X, hc, norm_w, fn):
        if self.n == 1:
            return X + fn(rmsnorm(X, norm_w, self.eps))
        pre, post, comb = hc(X)
        y = torch.einsum("ni,nic->nc", pre, X)
        f = fn(rmsnorm(y, norm_w, self.eps))
        return post[:, :, None] * f[:, None, :] + torch.einsum("njk,njc->nkc", comb, X)

    def forward(self, X, B, T, hash_ids):  # X (N, C) or (N, n, C)
        if self.engram is not None:
            n, C = self.n, X.shape[-1]
            h4 = X.reshape(B, T, n, C)
            if "engram_no_gate" in MUTATE:
                out = self.engram.value_proj(self.engram.multi_head_embedding(hash_ids)
                                             .flatten(start_dim=-2)).unsqueeze(2).expand(B, T, n, C)
                if self.engram.short_conv is not None:
                    out = out + self.engram.short_conv(out)
            else:
                out = self.engram(h4, hash_ids)
            X = X + out.reshape(X.shape)
        X = self.sub(X, getattr(self, "hc_attn", None), self.attn_norm,
                     lambda h: self.attn(h, B, T))
        ffn = self.moe if self.is_moe else self.mlp
        return self.sub(X, getattr(self, "hc_ffn", None), self.ffn_norm, ffn)


class Transformer(nn.Module):
    def __init__(self, cfg, head_sizes):
        super().__init__()
        m = cfg["model"]
        V, C, n = m["vocab_size"], m["hidden_size"], m["hc_mult"]
        self.n, self.eps = n, m["norm_eps"]
        self.embed = nn.Parameter(torch.empty(V, C))
        engram_layers = cfg["engram"]["layer_ids"] if "engram" in cfg else []
        self.engram_index = {l: i for i, l in enumerate(engram_layers)}
        self.layers = nn.ModuleList([
            Block(cfg, l, head_sizes[self.engram_index[l]] if l in self.engram_index else None)
            for l in range(m["num_layers"])])
        if n > 1:
            self.hc_head = HcHead(n, C)
        self.final_norm = nn.Parameter(torch.empty(C))
        self.head = nn.Parameter(torch.empty(V, C))

    def forward(self, inputs, targets, hash_ids):
        B, T = inputs.shape
        X = self.embed[inputs.reshape(-1)]                      # (N, C)
        if self.n > 1:
            X = X[:, None, :].expand(-1, self.n, -1)            # copied to every stream
        for l, block in enumerate(self.layers):
            ids = hash_ids[self.engram_index[l]] if l in self.engram_index else None
            X = block(X, B, T, ids)
        return self.head_loss(X, targets)

    def head_loss(self, X, targets):
        z = X if self.n == 1 else self.hc_head(X)
        logits = rmsnorm(z, self.final_norm, self.eps) @ self.head.T
        loss = F.cross_entropy(logits, targets.reshape(-1), ignore_index=-1)
        return logits, loss


# Our names <-> the module's: only the Engram table differs (the reference calls it
# multi_head_embedding.embedding.weight).
def torch_name(ours):
    return ours.replace("engram.table", "engram.multi_head_embedding.embedding.weight")


def apply_defaults(cfg):
    m = cfg["model"]
    m.setdefault("num_kv_heads", m["num_heads"])
    m.setdefault("head_dim", m["hidden_size"] // m["num_heads"])
    for k, v in {"hc_mult": 1, "rope_theta": 10000.0, "norm_eps": 1e-6, "first_dense_layers": 1,
                 "vocab_size": 128815}.items():
        m.setdefault(k, v)
    if "moe" in cfg:
        cfg["moe"].setdefault("num_shared_experts", 0)
        cfg["moe"].setdefault("route_scale", 1.0)
    if "engram" in cfg:
        cfg["engram"].setdefault("bias", True)
        cfg["engram"].setdefault("short_conv", True)
        cfg["engram"].setdefault("kernel_size", 4)
    return cfg


# ---- the check -------------------------------------------------------------------------------

def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / max(b.abs().max().item(), 1e-30)).item()


def load_dump(path):
    """(tensors, metadata) of a safetensors file; the safetensors package when installed."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        return load_file(path), meta
    except ImportError:  # a minimal reader: u64 header length, JSON header, packed bytes
        import struct
        dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
                  "I32": torch.int32}
        with open(path, "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        meta = header.pop("__metadata__", {})
        body = bytearray(data[8 + n:])
        t = {}
        for name, e in header.items():
            b, end = e["data_offsets"]
            dt = dtypes[e["dtype"]]
            t[name] = torch.frombuffer(body[b:end], dtype=dt).reshape(e["shape"]).clone() \
                if end > b else torch.zeros(e["shape"], dtype=dt)
        return t, meta


def check(path, device, verbose):
    t, meta = load_dump(path)
    cfg = apply_defaults(tomllib.loads(meta["config_toml"]))
    head_sizes = json.loads(meta.get("engram_head_sizes", "[]"))
    dtype = {"f32": torch.float32, "f64": torch.float64}[meta["dtype"]]
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    dump_device = meta.get("device", "cpu")  # CPU dumps have no key
    dump_math = meta.get("math")

    model = Transformer(cfg, head_sizes).to(device=device, dtype=dtype)
    state = {torch_name(k[len("param."):]): v for k, v in t.items() if k.startswith("param.")}
    state.update({k[len("buffer."):]: v for k, v in t.items() if k.startswith("buffer.")})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("multi_head_embedding.offsets")]
    assert not missing and not unexpected, f"{path}: missing {missing}, unexpected {unexpected}"
    for name, p in model.named_parameters():
        assert p.dtype == dtype and state[name].dtype == dtype, name

    inputs = t["inputs"].to(device)
    targets = t["targets"].to(device)
    hash_ids = t["hash_ids"].to(device=device, dtype=torch.long) if "hash_ids" in t else None
    logits, loss = model(inputs, targets, hash_ids)
    loss.backward()

    rows = [("logits", rel_err(t["logits"], logits.detach().cpu())),
            ("loss", rel_err(t["loss_f64"], loss.detach().cpu().reshape(1)))]
    params = dict(model.named_parameters())
    seen = set()
    for k in sorted(x for x in t if x.startswith("grad.")):
        name = torch_name(k[len("grad."):])
        g = params[name].grad
        g = torch.zeros_like(params[name]) if g is None else g
        rows.append((k, rel_err(t[k], g.detach().cpu())))
        seen.add(name)
    not_dumped = sorted(set(params) - seen)
    assert not not_dumped, f"{path}: no C++ gradient for {not_dumped}"

    notes = []
    if dump_math == "tf32":
        notes.append("math tf32: the C++ GEMMs ran on TF32 tensor cores, torch stays exact FP32, "
                     "so the errors include TF32 rounding (the 1e-4 limit is for exact FP32)")
    for l, block in enumerate(model.layers):
        if block.is_moe:
            st = block.moe.stats
            ours = t.get(f"moe_counts.{l}")
            same = ours is not None and torch.equal(ours.cpu(), st["counts"])
            notes.append(f"layer {l} MoE: loads torch {st['counts'].tolist()} vs C++ "
                         f"{ours.tolist() if ours is not None else None} "
                         f"({'same' if same else 'DIFFERENT: a near-tie flipped a selection?'}), "
                         f"min top-k margin {st['margin']:.3g}")
            if not same:
                rows.append((f"moe_counts.{l} (mismatch)", float("inf")))

    worst = max(rows, key=lambda r: r[1])
    grad_rows = [r for r in rows if r[0].startswith("grad.")]
    worst_grad = max(grad_rows, key=lambda r: r[1])
    ok = all(e <= tol for _, e in rows)
    name = os.path.basename(path)
    where = dump_device + (f" {dump_math}" if dump_math else "") + \
        (f" ({meta['gpu']})" if meta.get("gpu") else "")
    print(f"\n== {name}: {meta['dtype']}, dumped on {where}, B={meta['batch']} T={meta['seq']}, "
          f"{len(grad_rows)} gradients, tol {tol:g}: {'PASS' if ok else 'FAIL'}")
    print(f"   loss C++ {t['loss_f64'].item():.12g}  torch {loss.item():.12g}")
    for note in notes:
        print("   " + note)
    width = max(len(r[0]) for r in rows)
    for r, e in rows:
        if verbose or e > tol or not r.startswith("grad."):
            print(f"   {r:<{width}}  {e:.3e}{'  FAIL' if e > tol else ''}")
    print(f"   {'max over gradients':<{width}}  {worst_grad[1]:.3e}  ({worst_grad[0]})")
    return {"dump": name, "dtype": meta["dtype"], "dump_device": dump_device,
            "dump_math": dump_math, "pass": ok, "tol": tol,
            "logits": rows[0][1], "loss": rows[1][1], "max_grad": worst_grad[1],
            "max_grad_tensor": worst_grad[0], "worst": worst[1], "worst_tensor": worst[0],
            "gradients": len(grad_rows), "moe": notes,
            "errors": {r: e for r, e in rows}}


# ---- the training-throughput baseline -----------------------------------------------------

def is_prime(n):
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def engram_head_sizes(e):
    """Per Engram layer, the head table sizes in output order: for each layer, for each n-gram
    order's engram_vocab_size base, n_head_per_ngram successive unused primes above base - 1
    (engram::hash::next_unused_prime, as src/model/param_count.cpp and the hasher do)."""
    used, sizes = set(), []
    for _ in e["layer_ids"]:
        heads = []
        for base in e["engram_vocab_size"]:
            start = base - 1
            for _ in range(e["n_head_per_ngram"]):
                start += 1
                while not is_prime(start) or start in used:
                    start += 1
                used.add(start)
                heads.append(start)
        sizes.append(heads)
    return sizes


def init_params(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if leaf == "alpha":
                p.fill_(0.01)                                   # mHC scalars
            elif p.dim() == 1 and ("norm" in name or leaf == "weight"):
                p.fill_(1.0)                                    # RMSNorm weights
            elif p.dim() == 1:
                p.zero_()                                       # biases, mHC b
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def blas_threads(n):
    """torch.set_num_threads does not reach a generic BLAS: Debian's torch calls the system
    OpenBLAS, which starts one thread per core unless told. Sets its threads to n; returns a note
    on the BLAS (OpenBLAS's kernel core: OPENBLAS_CORETYPE picks it, set before start-up)."""
    import ctypes
    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}
    except OSError:
        libs = set()
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads(n)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_num_threads.restype = ctypes.c_int
            return (f"{os.path.basename(path)}, core {lib.openblas_get_corename().decode()}, "
                    f"{lib.openblas_get_num_threads()} threads")
        except (OSError, AttributeError):
            continue
    return "no OpenBLAS loaded (torch's own BLAS: MKL or similar)"


def set_tf32(on):
    """TF32 tensor cores for float32 GEMMs and convolutions on or off, through the fp32_precision
    API where this torch has it (2.9+: mixing it with the legacy allow_tf32 flags is an error
    there), the legacy flags otherwise. Returns what was set."""
    mode = "tf32" if on else "ieee"
    if hasattr(torch.backends, "fp32_precision"):
        try:
            torch.backends.cuda.matmul.fp32_precision = mode
            torch.backends.cudnn.conv.fp32_precision = mode
            torch.backends.cudnn.rnn.fp32_precision = mode
            return f"fp32_precision={mode}"
        except (AttributeError, RuntimeError):
            pass
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return f"allow_tf32={on}"


FLOPS_FORMULA = "6*(P_act - engram_table_active + C*V) + 6*L*T*Hq*hd (causal attention)"
PEAK_TFLOPS = {"bf16": 989.0, "tf32": 494.0, "f32": 67.0}  # H200 SXM datasheet, dense


def train_flops(model, cfg, T):
    """(flops_per_token, W) of engram::model::train_flops_per_token (param_count.h), from the
    modules: W = every parameter but the embedding, the LM head and the Engram tables, routed
    experts counted top_k / E, plus C * V (the LM head's multiply-adds)."""
    m = cfg["model"]
    w = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        if name in ("embed", "head") or "multi_head_embedding" in name:
            continue
        if len(parts) >= 2 and parts[-2] == "moe" and parts[-1] in ("w1", "w2", "w3"):
            w += p.numel() // p.shape[0] * cfg["moe"]["top_k"]   # top_k of E experts
        else:
            w += p.numel()
    w += m["hidden_size"] * m["vocab_size"]
    attention = 6 * m["num_layers"] * T * m["num_heads"] * m["head_dim"]
    return 6 * w + attention, w


def bench(argv):
    import statistics
    import time
    ap = argparse.ArgumentParser(prog="model_ref.py bench")
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=None, help="default 3 with --compile, else 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["f32", "tf32", "bf16"], default="f32")
    ap.add_argument("--compile", action="store_true", help="regional torch.compile")
    ap.add_argument("--attention", choices=["auto", "naive", "sdpa"], default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="MFU denominator (default on CUDA: H200 SXM dense 989 bf16, 494 tf32, "
                         "67 f32)")
    a = ap.parse_args(argv)
    if a.compile and not hasattr(torch, "compile"):
        sys.exit(f"model_ref.py bench: --compile needs torch >= 2.0 (this is {torch.__version__})")
    if a.warmup is None:
        a.warmup = 3 if a.compile else 1
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("model_ref.py bench: --device cuda but torch sees no GPU")
    if not cuda and a.dtype == "tf32":
        sys.exit("model_ref.py bench: --dtype tf32 needs --device cuda")
    if not cuda and a.dtype == "bf16":
        sys.exit("model_ref.py bench: --dtype bf16 needs --device cuda")
    torch.set_num_threads(a.threads)
    blas = blas_threads(a.threads)
    tf32 = set_tf32(a.dtype != "f32") if cuda else None
    sdpa = a.attention == "sdpa" or (a.attention == "auto" and cuda)
    with open(a.config, "rb") as f:
        cfg = apply_defaults(tomllib.load(f))
    tr = cfg.get("train", {})
    B, T = tr.get("batch_size", 8), tr.get("seq_len", 256)
    lr, wd = tr.get("lr", 1e-3), tr.get("weight_decay", 0.1)
    clip, engram_mult = tr.get("grad_clip", 1.0), tr.get("engram_lr_multiplier", 5.0)
    V = cfg["model"]["vocab_size"]
    head_sizes = engram_head_sizes(cfg["engram"]) if "engram" in cfg else []

    torch.manual_seed(a.seed)
    model = Transformer(cfg, head_sizes).to(dtype=torch.float32)
    init_params(model, a.seed)
    model.to(dev)
    for block in model.layers:
        block.attn.sdpa = sdpa
        if cuda and block.is_moe:
            block.moe.grouped = True
    if a.compile:
        # Every block is compiled through the same code objects: their entries (three
        # structures: dense, MoE, MoE + Engram; the first block's broadcast input) share one cache.
        import importlib
        dc = importlib.import_module("torch._dynamo").config
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(dc, limit):
                setattr(dc, limit, max(getattr(dc, limit), 64))
        for block in model.layers:
            block.compile()
        model.head_loss = torch.compile(model.head_loss)
    decay, no_decay, tables = [], [], []
    for name, p in model.named_parameters():
        if "multi_head_embedding" in name:
            tables.append(p)
        elif p.dim() >= 2 and name != "embed":
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if tables:
        groups.append({"params": tables, "weight_decay": 0.0, "lr": lr * engram_mult})
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), **({"fused": True} if cuda else {}))
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token, flops_weights = train_flops(model, cfg, T)

    g = torch.Generator().manual_seed(a.seed + 1)

    def batch():
        x = torch.randint(0, V, (B, T + 1), generator=g)
        ids = [torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], dim=-1)
               for sizes in head_sizes]
        if cuda:
            return x[:, :-1].to(dev), x[:, 1:].to(dev), [i.to(dev) for i in ids]
        return x[:, :-1], x[:, 1:], ids

    def sync():
        if cuda:
            torch.cuda.synchronize()

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if a.dtype == "bf16" \
        else (lambda: contextlib.nullcontext())

    def step(inputs, targets, ids):
        opt.zero_grad(set_to_none=True)
        with autocast():
            _, loss = model(inputs, targets, ids)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    t_first = time.perf_counter()
    for s in range(a.warmup + a.steps):
        inputs, targets, ids = batch()
        sync()
        t0 = time.perf_counter()
        losses.append(step(inputs, targets, ids))
        sync()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    total_s = time.perf_counter() - t_first
    sec = statistics.median(times)
    tokens_per_s = B * T / sec
    peak = a.peak_tflops if a.peak_tflops is not None else (PEAK_TFLOPS[a.dtype] if cuda else None)
    peak_source = "--peak-tflops" if a.peak_tflops is not None else \
        (f"H200 SXM datasheet {'FP32' if a.dtype == 'f32' else a.dtype.upper() + ' dense'}"
         if cuda else None)
    tflops = tokens_per_s * flops_per_token / 1e12
    print(json.dumps({
        "bench": "train_torch", "config": a.config, "threads": a.threads,
        "torch": torch.__version__, "blas": blas, "steps": a.steps, "warmup": a.warmup,
        "tokens_per_step": B * T, "tokens_per_s": round(tokens_per_s, 1),
        "seconds_per_step": round(sec, 4), "step_seconds": [round(t, 4) for t in times],
        "params": n_params, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "step": "forward + backward + clip_grad_norm_ + AdamW (weight decay on matrices)",
        "embeddings": "dense (sparse=False): embedding, LM head and Engram tables updated densely",
        "hash_ids": "uniform random id per head below the head's prime table size (not real "
                    "n-gram hashes); no data loader or hashing timed" if head_sizes else None,
        "device": a.device,
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
        "dtype": a.dtype, "tf32": tf32, "compile": a.compile,
        "attention": "sdpa" if sdpa else "naive",
        "moe_dispatch": ("argsort, one sync per layer" if cuda else "nonzero per expert")
        if cfg.get("moe") else None,
        "warmup_plus_timed_s": round(total_s, 1),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None,
        "flops_weights": flops_weights, "flops_per_token": flops_per_token,
        "flops_formula": FLOPS_FORMULA, "tflops": round(tflops, 3),
        "peak_tflops": peak, "peak_source": peak_source,
        "mfu": round(tflops / peak, 4) if peak else None}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        return bench(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write every per-tensor error here")
    ap.add_argument("--verbose", action="store_true", help="print every gradient's error")
    ap.add_argument("--mutate", action="append", default=[],
                    choices=["rope_interleaved", "sinkhorn_short", "moe_unnormalized",
                             "engram_no_gate"])
    a = ap.parse_args()
    MUTATE.update(a.mutate)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {where}" + (f", mutations {sorted(MUTATE)}" if MUTATE else ""))
    results = [check(p, dev, a.verbose) for p in a.dumps]
    ok = all(r["pass"] for r in results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": where, "mutate": sorted(MUTATE),
                       "pass": ok, "results": results}, f, indent=1)
    summary = [{k: r[k] for k in ("dump", "dump_device", "dump_math", "pass", "logits", "loss",
                                  "max_grad", "max_grad_tensor")}
               for r in results]
    print(json.dumps({"torch": torch.__version__, "device": where, "mutate": sorted(MUTATE),
                      "pass": ok, "results": summary}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
