#!/usr/bin/env python3
"""KV-cached incremental decoding with the PyTorch mirror of engram's model (model_ref.py): the
baseline of bench/bench_decode (tools/bench/decode_gpu.sh runs both).

  decode_ref.py bench --config FILE.toml [--batch 1,64] [--prompt 128] [--steps 128]
                      [--dtype f32|tf32|bf16] [--device cuda|cpu] [--seed 0] [--compile]
                      [--warmup 3]

Builds the mirror from the TOML config (model_ref.Transformer, float32 parameters, model_ref's
random init) and decodes B sequences in lock step, as a static-batch PyTorch decoder does: a
prompt of P random tokens (one forward over (B, P), filling the caches; not timed), W warm-up
decode steps (not timed), then `steps` timed steps, each a forward of one token per sequence over the caches, the LM head on those B
rows, the greedy argmax and its B ids read back to the host (fed to the next step). Per layer the
caches hold K (after RoPE) and V, (B, Hkv, P + steps, hd), and per Engram layer with the short
conv the last R = max_ngram_size * (kernel_size - 1) gated values (B, R, hc_mult, C): the conv
runs over (history, new values) and keeps the outputs of the new positions (zero history rows
normalise to zero, the conv's causal zero padding). Attention: F.scaled_dot_product_attention
(one query row: no mask; a prompt: the causal mask offset by the cache length). MoE: model_ref's
one-sync-per-layer dispatch on CUDA. Engram hash ids: uniform random ids per head below the
head's prime table size, made before the clock (no hashing is timed; engram's bench hashes on
the host inside each step).
  --dtype    f32: IEEE FP32 GEMMs; tf32: TF32 tensor-core GEMMs; bf16: torch.autocast(bfloat16)
             with bf16 caches.
  --compile  regional torch.compile of the static-shape pieces: every mHC coefficient module
             (the Sinkhorn loop), the head read-out, the dense SwiGLU FFNs, the Engram gated value
             and short conv; attention over the growing caches and the MoE dispatch (host sync,
             data-dependent shapes) stay eager. Compilation happens in the check and the warm-up
             (one graph per distinct shape).
Before timing, the decoder is checked against the full forward: for 2 sequences, the logits of a
prompt of 8 and 4 single steps against model_ref.Transformer.forward over the 12 tokens
("check_max_rel_err": max |a - b| / max(max |b|, 1); float32 or TF32 rounding, bf16's larger).
Prints one JSON line per batch size:
  {"bench": "decode", "impl": "torch", "gpu", "config", "dtype", "batch", "prompt", "steps",
   "tokens_per_s" (batch * steps / timed seconds), "ms_per_step" (median), "ms_per_step_mean",
   "check_max_rel_err", "torch"}
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import tomllib

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref  # noqa: E402
from model_ref import rmsnorm  # noqa: E402


def rope_at(x, pos, theta):
    """x (B, T, H, hd) at positions pos .. pos + T - 1 (model_ref.rope's rotate-half)."""
    B, T, H, hd = x.shape
    half = hd // 2
    i = torch.arange(half, dtype=torch.float64, device=x.device)
    inv_freq = theta ** (-2.0 * i / hd)
    t = torch.arange(pos, pos + T, dtype=torch.float64, device=x.device)
    ang = t[:, None] * inv_freq[None, :]
    cos = ang.cos().to(x.dtype)[None, :, None, :]
    sin = ang.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def sdpa(q, k, v, mask):
    """softmax(q k^T / sqrt(hd) masked) v; F.scaled_dot_product_attention where torch has it
    (>= 2.0), the explicit product otherwise (Debian's torch 1.13)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / q.shape[-1] ** 0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def engram_value(e, hidden, ids):
    """The Engram layer's gated value alpha * v (B, T, M, d), before its short conv."""
    return e.gated_value(hidden, ids)


class Decoder:
    """Caches for B sequences decoded in lock step; step() appends T tokens to each."""

    def __init__(self, model, cfg, B, max_len, device, cache_dtype):
        m = cfg["model"]
        self.model, self.cfg, self.B = model, cfg, B
        self.n, self.C = m["hc_mult"], m["hidden_size"]
        hkv, hd = m["num_kv_heads"], m["head_dim"]
        L = m["num_layers"]
        self.k = [torch.zeros(B, hkv, max_len, hd, device=device, dtype=cache_dtype)
                  for _ in range(L)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.hist = {}
        e = cfg.get("engram")
        if e and e["short_conv"]:
            R = e["max_ngram_size"] * (e["kernel_size"] - 1)
            for l in e["layer_ids"]:
                self.hist[l] = torch.zeros(B, R, self.n, self.C, device=device,
                                           dtype=torch.float32)
        self.pos = 0

    def attention(self, attn, layer, h, T):
        B, hd, pos = self.B, attn.hd, self.pos
        q = rope_at((h @ attn.wq.T).view(B, T, attn.heads, hd), pos, attn.theta)
        k = rope_at((h @ attn.wk.T).view(B, T, attn.kv_heads, hd), pos, attn.theta)
        v = (h @ attn.wv.T).view(B, T, attn.kv_heads, hd)
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, pos:pos + T] = k.transpose(1, 2).to(kc.dtype)
        vc[:, :, pos:pos + T] = v.transpose(1, 2).to(vc.dtype)
        K, V = kc[:, :, :pos + T], vc[:, :, :pos + T]
        group = attn.heads // attn.kv_heads
        if group > 1:
            K = K.repeat_interleave(group, dim=1)
            V = V.repeat_interleave(group, dim=1)
        q = q.transpose(1, 2)  # (B, Hq, T, hd)
        mask = None
        if T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=h.device).tril(diagonal=pos)
        ctx = sdpa(q, K.to(q.dtype), V.to(q.dtype), mask)
        return ctx.transpose(1, 2).reshape(B * T, attn.heads * hd) @ attn.wo.T

    def step(self, tokens, hash_ids):
        """tokens (B, T) int64, hash_ids: per Engram layer (B, T, H). Returns the logits (B, V)
        of each sequence's last new token."""
        model, B, n, C = self.model, self.B, self.n, self.C
        T = tokens.shape[1]
        X = model.embed[tokens.reshape(-1)]
        if n > 1:
            X = X[:, None, :].expand(-1, n, -1)
        for l, block in enumerate(model.layers):
            if block.engram is not None:
                ids = hash_ids[model.engram_index[l]]
                value = ENGRAM_VALUE(block.engram, X.reshape(B, T, n, C), ids)
                if block.engram.short_conv is not None:
                    window = torch.cat([self.hist[l].to(value.dtype), value], dim=1)
                    out = value + block.engram.short_conv(window)[:, -T:]
                    self.hist[l] = window[:, -self.hist[l].shape[1]:].float()
                else:
                    out = value
                X = X + out.reshape(X.shape)
            X = block.sub(X, getattr(block, "hc_attn", None), block.attn_norm,
                          lambda h, blk=block, layer=l: self.attention(blk.attn, layer, h, T))
            ffn = block.moe if block.is_moe else block.mlp
            X = block.sub(X, getattr(block, "hc_ffn", None), block.ffn_norm, ffn)
        self.pos += T
        last = X.reshape(B, T, *X.shape[1:])[:, -1]
        z = last if n == 1 else model.hc_head(last)
        return rmsnorm(z, model.final_norm, model.eps) @ model.head.T


ENGRAM_VALUE = engram_value  # torch.compile'd with --compile


def compile_regions(model):
    global ENGRAM_VALUE
    import importlib
    dc = importlib.import_module("torch._dynamo").config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, limit):
            setattr(dc, limit, max(getattr(dc, limit), 512))
    for block in model.layers:
        for name in ("hc_attn", "hc_ffn"):
            if hasattr(block, name):
                getattr(block, name).compile()
        if not block.is_moe:
            block.mlp.compile()
        if block.engram is not None and block.engram.short_conv is not None:
            block.engram.short_conv.compile()
    if hasattr(model, "hc_head"):
        model.hc_head.compile()
    ENGRAM_VALUE = torch.compile(engram_value)


def random_ids(head_sizes, B, T, g, device):
    return [torch.stack([torch.randint(0, s, (B, T), generator=g) for s in sizes], dim=-1)
            .to(device) for sizes in head_sizes]


def bench(argv):
    ap = argparse.ArgumentParser(prog="decode_ref.py bench")
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--dtype", choices=["f32", "tf32", "bf16"], default="f32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("decode_ref.py bench: --device cuda but torch sees no GPU")
    if not cuda and a.dtype != "f32":
        sys.exit("decode_ref.py bench: --dtype tf32 and bf16 need --device cuda")
    tf32 = model_ref.set_tf32(a.dtype != "f32") if cuda else None
    with open(a.config, "rb") as f:
        cfg = model_ref.apply_defaults(tomllib.load(f))
    m = cfg["model"]
    V = m["vocab_size"]
    head_sizes = model_ref.engram_head_sizes(cfg["engram"]) if "engram" in cfg else []
    torch.manual_seed(a.seed)
    model = model_ref.Transformer(cfg, head_sizes).to(dtype=torch.float32)
    model_ref.init_params(model, a.seed)
    model.to(dev)
    model.eval()
    for block in model.layers:
        block.attn.sdpa = hasattr(F, "scaled_dot_product_attention")
        if cuda and block.is_moe:
            block.moe.grouped = True
    if a.compile:
        compile_regions(model)
    bf16 = a.dtype == "bf16"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 \
        else (lambda: contextlib.nullcontext())
    cache_dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(a.seed + 1)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # The check: incremental logits against the full forward.
    with torch.no_grad(), autocast():
        Bc, P, S = 2, 8, 4
        toks = torch.randint(0, V, (Bc, P + S), generator=g).to(dev)
        ids = random_ids(head_sizes, Bc, P + S, g, dev)
        full, _ = model(toks, torch.full_like(toks, -1), ids)
        full = full.float().reshape(Bc, P + S, V)
        dec = Decoder(model, cfg, Bc, P + S, dev, cache_dtype)
        got = [dec.step(toks[:, :P], [i[:, :P] for i in ids]).float()]
        for t in range(P, P + S):
            got.append(dec.step(toks[:, t:t + 1], [i[:, t:t + 1] for i in ids]).float())
        err = 0.0
        for j, lg in enumerate(got):
            ref = full[:, P - 1 + j]
            err = max(err, ((lg - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item())

    for B in (int(b) for b in a.batch.split(",")):
        L = a.prompt + a.warmup + a.steps
        toks = torch.randint(0, V, (B, a.prompt), generator=g).to(dev)
        ids = random_ids(head_sizes, B, L, g, dev)
        times = []
        with torch.no_grad(), autocast():
            dec = Decoder(model, cfg, B, L, dev, cache_dtype)
            logits = dec.step(toks, [i[:, :a.prompt] for i in ids])
            nxt_host = logits.argmax(-1).tolist()

            def one(at):
                logits = dec.step(torch.tensor(nxt_host, device=dev).view(B, 1),
                                  [i[:, at:at + 1] for i in ids])
                return logits.argmax(-1).tolist()

            for w in range(a.warmup):
                nxt_host = one(a.prompt + w)
            sync()
            t_all = time.perf_counter()
            for s in range(a.steps):
                t0 = time.perf_counter()
                nxt_host = one(a.prompt + a.warmup + s)
                times.append(time.perf_counter() - t0)
            sync()
            total = time.perf_counter() - t_all
        print(json.dumps({
            "bench": "decode", "impl": "torch", "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(dev) if cuda else None, "config": a.config,
            "dtype": a.dtype, "tf32": tf32, "compile": a.compile, "warmup": a.warmup, "batch": B, "prompt": a.prompt, "steps": a.steps,
            "tokens_per_s": round(B * a.steps / total, 1),
            "ms_per_step": round(statistics.median(times) * 1e3, 4),
            "ms_per_step_mean": round(statistics.mean(times) * 1e3, 4),
            "check_max_rel_err": err,
            "hash_ids": "uniform random per head (not hashed; none timed)" if head_sizes else None,
        }), flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        return bench(sys.argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
