#!/usr/bin/env python3
"""The reference's tokenizer compression (engram_demo_v1.py, CompressedTokenizer) with Hugging
Face `tokenizers`, for any tokenizer.json: writes the int32 lookup table as .npy.

Usage: compress_reference.py TOKENIZER_JSON OUT.npy
Decoding and id-to-token lookups use tokenizers.Tokenizer directly, as the golden files were made.
"""
import sys

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

SENTINEL = "\uE000"
NORMALIZER = normalizers.Sequence([
    normalizers.NFKC(),
    normalizers.NFD(),
    normalizers.StripAccents(),
    normalizers.Lowercase(),
    normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
    normalizers.Replace(Regex(r"^ $"), SENTINEL),
    normalizers.Strip(),
    normalizers.Replace(SENTINEL, " "),
])


def build_lookup_table(tok):
    key2new = {}
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    lookup = np.empty(vocab_size, dtype=np.int32)
    for tid in range(vocab_size):
        text = tok.decode([tid], skip_special_tokens=False)
        if "\ufffd" in text:
            key = tok.id_to_token(tid)
        else:
            norm = NORMALIZER.normalize_str(text)
            key = norm if norm else text
        lookup[tid] = key2new.setdefault(key, len(key2new))
    return lookup


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    lut = build_lookup_table(tok)
    np.save(sys.argv[2], lut)
    print({"tokenizer": sys.argv[1], "vocab": len(lut), "compressed": int(lut.max()) + 1})


if __name__ == "__main__":
    main()
