#!/usr/bin/env python3
"""The reference Engram module (engram_demo_v1.py: ShortConv, MultiHeadEmbedding, the gated
value path) in PyTorch, fed with precomputed hash ids, as an oracle and a speed baseline.

  engram_layer_ref.py parity IN.safetensors OUT.safetensors
      IN as for `engram run-layer`, plus hash_ids (B, T, H). Computes in float64 and writes
      output, grad_hidden_states and grad.<name> for every parameter (loss = sum(output *
      grad_output)). Without param.short_conv.* the layer is Y = alpha * v (DeepSeek-V4.1);
      without biases the projections have none.
  engram_layer_ref.py bench [--tokens N] [--threads N] [--device cpu|cuda] [--dtype f32|bf16]
                            [--compile]
      Forward and forward+backward tokens/s of the reference module at hidden 1024, hc_mult 4,
      2 orders x 8 heads x 64 dims, the reference default table (16 heads of ~646,400 rows),
      in rows of 4096 tokens (--tokens 16384: B=4, T=4096). Times are the best of >= 3 runs
      (*_ms) and their mean (*_mean_ms); --compile runs the module through torch.compile.
Runs where torch and safetensors are installed (the GPU host).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn


class ShortConv(nn.Module):
    def __init__(self, hidden_size, kernel_size, dilation, hc_mult, norm_eps=1e-5):
        super().__init__()
        channels = hidden_size * hc_mult
        self.conv = nn.Conv1d(channels, channels, kernel_size=kernel_size, groups=channels, bias=False,
                              padding=(kernel_size - 1) * dilation, dilation=dilation)
        self.norms = nn.ModuleList([nn.RMSNorm(hidden_size, eps=norm_eps) for _ in range(hc_mult)])
        self.act_fn = nn.SiLU()

    def forward(self, x):  # (B, T, M, d)
        B, T, G, C = x.shape
        x_norm = torch.cat([self.norms[i](x[:, :, i, :]) for i in range(G)], dim=-1)
        y = self.conv(x_norm.transpose(1, 2))[..., :T]
        return self.act_fn(y).transpose(1, 2).reshape(B, T, G, C).contiguous()


class MultiHeadEmbedding(nn.Module):
    def __init__(self, sizes, dim):
        super().__init__()
        offsets = [0]
        for n in sizes[:-1]:
            offsets.append(offsets[-1] + n)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        self.embedding = nn.Embedding(sum(sizes), dim)

    def forward(self, ids):  # (B, T, H) -> (B, T, H, D)
        return self.embedding(ids + self.offsets)


class Engram(nn.Module):
    def __init__(self, sizes, hidden_size, hc_mult, max_ngram_size, n_embed_per_ngram, n_head_per_ngram,
                 kernel_size, bias=True, short_conv=True):
        super().__init__()
        self.hidden_size, self.hc_mult = hidden_size, hc_mult
        self.multi_head_embedding = MultiHeadEmbedding(sizes, n_embed_per_ngram // n_head_per_ngram)
        self.short_conv = ShortConv(hidden_size, kernel_size, max_ngram_size, hc_mult) if short_conv else None
        d_mem = (max_ngram_size - 1) * n_embed_per_ngram
        self.value_proj = nn.Linear(d_mem, hidden_size, bias=bias)
        self.key_projs = nn.ModuleList([nn.Linear(d_mem, hidden_size, bias=bias) for _ in range(hc_mult)])
        self.norm1 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])

    def gated_value(self, hidden_states, hash_ids):
        """alpha * v (B, T, M, d): the layer before its short conv (decode_ref.py runs the conv
        over a history of these)."""
        embeddings = self.multi_head_embedding(hash_ids).flatten(start_dim=-2)
        gates = []
        for m in range(self.hc_mult):
            key = self.norm1[m](self.key_projs[m](embeddings))
            query = self.norm2[m](hidden_states[:, :, m, :])
            gate = (key * query).sum(dim=-1) / math.sqrt(self.hidden_size)
            gate = gate.abs().clamp_min(1e-6).sqrt() * gate.sign()
            gates.append(gate.sigmoid().unsqueeze(-1))
        return torch.stack(gates, dim=2) * self.value_proj(embeddings).unsqueeze(2)

    def forward(self, hidden_states, hash_ids):
        value = self.gated_value(hidden_states, hash_ids)
        return value + self.short_conv(value) if self.short_conv is not None else value


def parity(in_path, out_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(in_path, framework="pt") as f:
        meta = f.metadata()
    t = load_file(in_path)
    params = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    hash_ids, hidden, grad_out = t["hash_ids"], t["hidden_states"], t["grad_output"]
    B, T, M, d = hidden.shape
    sizes = json.loads(meta["head_sizes"])  # per head, in output order
    max_n, heads = int(meta["max_ngram_size"]), int(meta["n_head_per_ngram"])
    D = params["multi_head_embedding.embedding.weight"].shape[1]
    short_conv = "short_conv.conv.weight" in params
    kernel = params["short_conv.conv.weight"].shape[-1] if short_conv else 4
    model = Engram(sizes, d, M, max_n, D * heads, heads, kernel, bias="value_proj.bias" in params,
                   short_conv=short_conv).double()
    # The offsets buffer is derived from the head sizes; every parameter must be given.
    missing, unexpected = model.load_state_dict(params, strict=False)
    assert missing == ["multi_head_embedding.offsets"] and not unexpected, (missing, unexpected)
    hidden = hidden.clone().requires_grad_(True)
    out = model(hidden, hash_ids)
    (out * grad_out).sum().backward()
    result = {"output": out.detach(), "grad_hidden_states": hidden.grad}
    for name, p in model.named_parameters():
        result["grad." + name] = p.grad
    save_file({k: v.contiguous() for k, v in result.items()}, out_path)


def bench(args):
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    sizes = [646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523,
             646537, 646543, 646549, 646571, 646573, 646577, 646609, 646619]
    model = Engram(sizes, 1024, 4, 3, 512, 8, 4).to(dev, dtype)
    seq = min(args.tokens, 4096)
    batch = (args.tokens + seq - 1) // seq
    g = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randint(0, s, (batch, seq), generator=g) for s in sizes], dim=-1).to(dev)
    hidden = torch.randn(batch, seq, 4, 1024, generator=g).to(dev, dtype).requires_grad_(True)
    grad_out = torch.randn(batch, seq, 4, 1024, generator=g).to(dev, dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, min_seconds=2.0):
        fn()
        sync()
        best, total, reps = float("inf"), 0.0, 0
        while reps < 3 or total < min_seconds:
            t0 = time.perf_counter()
            fn()
            sync()
            dt = time.perf_counter() - t0
            best, total, reps = min(best, dt), total + dt, reps + 1
        means.append(total / reps)
        return best

    means = []
    run = torch.compile(model) if args.compile else model

    def fwd():
        with torch.no_grad():
            run(hidden, ids)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        hidden.grad = None
        (run(hidden, ids) * grad_out).sum().backward()

    n = batch * seq
    f, fb = timed(fwd), timed(fwd_bwd)
    print(json.dumps({"reference": "pytorch", "torch": torch.__version__, "device": args.device, "dtype": args.dtype,
                      "threads": args.threads, "tokens": n, "batch": batch, "seq": seq,
                      "compile": args.compile, "forward_mean_ms": means[0] * 1e3,
                      "forward_backward_mean_ms": means[1] * 1e3, "forward_tokens_per_s": n / f,
                      "forward_backward_tokens_per_s": n / fb, "forward_ms": f * 1e3, "forward_backward_ms": fb * 1e3}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    pp = sub.add_parser("parity")
    pp.add_argument("inp")
    pp.add_argument("out")
    pb = sub.add_parser("bench")
    pb.add_argument("--tokens", type=int, default=4096)
    pb.add_argument("--threads", type=int, default=torch.get_num_threads())
    pb.add_argument("--device", default="cpu")
    pb.add_argument("--dtype", default="f32")
    pb.add_argument("--compile", action="store_true")
    a = p.parse_args()
    parity(a.inp, a.out) if a.mode == "parity" else bench(a)


if __name__ == "__main__":
    main()
