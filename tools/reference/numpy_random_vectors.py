#!/usr/bin/env python3
"""Writes tests/fixtures/hash/numpy_random_vectors.json: numpy's SeedSequence, PCG64 and
Generator.integers outputs that tests/hash/numpy_random_test.cpp must reproduce bit for bit.

Usage: python3 tools/reference/numpy_random_vectors.py [OUT.json]
Any numpy >= 1.17 gives the same numbers (numpy keeps these streams stable across versions).
"""
import json
import sys

import numpy as np

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Seeds of one or more 32-bit entropy words, incl. the multiplier seeds seed + 10007 * layer.
SEEDS = [0, 1, 7, 2, 10007, 10007 * 15, 7 + 10007 * 3, 2**32 - 1, 2**32 + 5, 2**63 - 1,
         2**63 - 1 + 10007, 2**64 - 1, 2**64 + 3, 2**96 + 2**64 + 12345]

# (low, high, n) for Generator.integers(low, high, n, dtype=np.int64), drawn in this order from
# one generator, so the 32-bit buffer carried between calls is exercised too.
DRAWS = [
    (0, INT64_MAX // 98627 // 2, 8),  # the multipliers' range for V' = 98,627: Lemire 64-bit
    (0, 1, 4),                  # range 1: all low, no draw
    (0, 1000, 9),               # Lemire 32-bit, buffered halves (odd count leaves one)
    (0, 2**32, 5),              # rng == 0xFFFFFFFF: raw next_uint32
    (-5, 5, 7),                 # negative low, 32-bit path
    (0, 2**32 + 1, 5),          # just above 32 bits: 64-bit path
    (INT64_MIN, INT64_MAX, 6),  # widest range below 2^64 - 1: Lemire 64-bit
    (0, 3, 40),                 # tiny range, many draws
    (10, 2**31 + 10, 6),        # 32-bit path with an offset
    (0, 2**63 - 1, 6),          # large 64-bit range
    (0, 2**62 + 1, 6),          # rejection threshold 2^62 - 3: a quarter of the draws rejected
    (-(2**62), 2**62 + 1, 8),   # range 2^63 + 1: half of the 64-bit draws rejected
    (0, 2**31 + 1, 8),          # range 2^31 + 1: half of the 32-bit draws rejected
    (0, 2, 33),
]


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hash/numpy_random_vectors.json"
    cases = []
    for seed in SEEDS:
        ss = np.random.SeedSequence(seed)
        words = []
        value = seed
        while True:
            words.append(value & 0xFFFFFFFF)
            value >>= 32
            if value == 0:
                break
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        draws = []
        for low, high, n in DRAWS:
            values = gen.integers(low, high, size=n, dtype=np.int64)
            draws.append({"low": low, "high": high, "values": [int(v) for v in values]})
        cases.append({
            "seed": str(seed),  # decimal string: may exceed 64 bits
            "entropy_words": words,
            "pool": [int(v) for v in ss.pool],
            "state_u32": [int(v) for v in ss.generate_state(9, np.uint32)],
            "state_u64": [int(v) for v in ss.generate_state(5, np.uint64)],
            "raw_u64": [int(v) for v in np.random.PCG64(np.random.SeedSequence(seed)).random_raw(8)],
            "integers": draws,
        })
    with open(out_path, "w") as f:  # one case a line
        f.write('{"numpy_version": %s,\n "cases": [\n' % json.dumps(np.__version__))
        f.write(",\n".join("  " + json.dumps(case) for case in cases))
        f.write("\n ]}\n")


if __name__ == "__main__":
    main()
