#!/usr/bin/env python3
"""The reference's numpy n-gram hashing, as a standalone benchmark baseline for bench_hash.

The hashing is NgramHashMapping._get_ngram_hashes of engram_demo_v1.py (compression through the
lookup table with the >= 0 mask, pad shift per k via np.pad, wrapping multiply/xor mix,
`mix % mod` per head, np.stack on axis 2); multipliers and primes are set up as the reference
does. Config: the reference defaults (cfg_default): engram_vocab_size [646400, 646400], max n 3,
8 heads, layers [1, 15], pad_id 2, seed 0.

Usage:
  python3 tools/reference/engram_hash_numpy.py LUT.npy [--batch 8] [--seq-len 4096]
      [--min-seconds 3]
Prints one JSON line: tokens/s for one layer and for both layers (single thread: numpy's
integer ops do not use threads). Runs with numpy 1.24 and 2.x.
"""
import argparse
import json
import platform
import time

import numpy as np

ENGRAM_VOCAB_SIZE = [646400, 646400]
MAX_NGRAM_SIZE = 3
N_HEAD_PER_NGRAM = 8
LAYER_IDS = [1, 15]
PAD_ID = 2
SEED = 0


def is_prime(n):
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def find_next_prime(start, seen_primes):
    candidate = start + 1
    while True:
        if is_prime(candidate) and candidate not in seen_primes:
            return candidate
        candidate += 1


class NgramHashMapping:
    def __init__(self, lookup_table):
        self.lookup_table = np.asarray(lookup_table, dtype=np.int64)
        self.tokenizer_vocab_size = int(self.lookup_table.max()) + 1  # V'
        self.pad_id = int(self.lookup_table[PAD_ID])
        self.max_ngram_size = MAX_NGRAM_SIZE
        self.n_head_per_ngram = N_HEAD_PER_NGRAM
        self.layer_ids = LAYER_IDS

        max_long = np.iinfo(np.int64).max
        half_bound = max(1, int(max_long // self.tokenizer_vocab_size) // 2)
        self.layer_multipliers = {}
        for layer_id in self.layer_ids:
            g = np.random.default_rng(int(SEED + 10007 * int(layer_id)))
            r = g.integers(low=0, high=half_bound, size=(self.max_ngram_size,), dtype=np.int64)
            self.layer_multipliers[layer_id] = r * 2 + 1

        seen_primes = set()
        self.vocab_size_across_layers = {}
        for layer_id in self.layer_ids:
            all_sizes = []
            for ngram in range(2, self.max_ngram_size + 1):
                heads = []
                start = ENGRAM_VOCAB_SIZE[ngram - 2] - 1
                for _ in range(self.n_head_per_ngram):
                    p = find_next_prime(start, seen_primes)
                    seen_primes.add(p)
                    heads.append(p)
                    start = p
                all_sizes.append(heads)
            self.vocab_size_across_layers[layer_id] = all_sizes

    def compress(self, input_ids):
        arr = np.asarray(input_ids, dtype=np.int64)
        pos_mask = arr >= 0
        out = arr.copy()
        out[pos_mask] = self.lookup_table[arr[pos_mask]]
        return out

    def _get_ngram_hashes(self, x, layer_id):
        x = np.asarray(x, dtype=np.int64)
        B, T = x.shape
        multipliers = self.layer_multipliers[layer_id]

        def shift_k(k):
            if k == 0:
                return x
            return np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=self.pad_id)[:, :T]

        base_shifts = [shift_k(k) for k in range(self.max_ngram_size)]
        all_hashes = []
        for n in range(2, self.max_ngram_size + 1):
            tokens = base_shifts[:n]
            mix = tokens[0] * multipliers[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, tokens[k] * multipliers[k])
            for j in range(self.n_head_per_ngram):
                mod = int(self.vocab_size_across_layers[layer_id][n - 2][j])
                all_hashes.append((mix % mod).astype(np.int64, copy=False))
        return np.stack(all_hashes, axis=2)

    def hash(self, input_ids, layer_ids):
        compressed = self.compress(input_ids)
        return {l: self._get_ngram_hashes(compressed, l) for l in layer_ids}


def tokens_per_second(fn, tokens, min_seconds):
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return runs * tokens / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lut", help="compression table .npy (e.g. ../shared/golden/dsv3_compress_lut.npy)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()

    mapping = NgramHashMapping(np.load(args.lut))
    rng = np.random.default_rng(2)
    ids = rng.integers(0, len(mapping.lookup_table), size=(args.batch, args.seq_len), dtype=np.int64)
    tokens = args.batch * args.seq_len
    one = tokens_per_second(lambda: mapping.hash(ids, LAYER_IDS[:1]), tokens, args.min_seconds)
    both = tokens_per_second(lambda: mapping.hash(ids, LAYER_IDS), tokens, args.min_seconds)
    print(json.dumps({
        "numpy": np.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "one_layer_tokens_per_s": round(one),
        "all_layers_tokens_per_s": round(both),
    }))


if __name__ == "__main__":
    main()
