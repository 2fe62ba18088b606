#!/usr/bin/env python3
"""Reference encodings and encode throughput from Hugging Face `tokenizers`.

  encode_reference.py ids TOKENIZER_JSON OUT_DIR DOC.txt...
      Writes OUT_DIR/<name>.ids.u32 (little-endian uint32) for every document, encoded without
      special tokens, and prints one JSON line per document (bytes, tokens, round trip).
  encode_reference.py bench TOKENIZER_JSON DOC.txt... [--threads N]
      Prints one JSON line per document: single-thread encode MB/s (best of several runs, warm
      cache) and encode_batch MB/s over paragraph-sized documents on N threads.

Runs where `tokenizers` is installed (the GPU host); engram's tests read the .u32 files.
"""
import array
import json
import os
import sys
import time


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def split_documents(text, pieces):
    target = max(len(text) // max(pieces, 1), 1)
    docs, start = [], 0
    while start < len(text):
        cut = min(len(text), start + target)
        if cut < len(text):
            eol = text.find("\n", cut)
            cut = len(text) if eol < 0 else eol + 1
        docs.append(text[start:cut])
        start = cut
    return docs


def best_time(fn, min_reps=3, min_seconds=1.0):
    best, total, reps = float("inf"), 0.0, 0
    while reps < min_reps or total < min_seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def main():
    from tokenizers import Tokenizer
    import tokenizers

    mode, tok_path = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(tok_path)
    if mode == "ids":
        out_dir = sys.argv[3]
        os.makedirs(out_dir, exist_ok=True)
        for doc in sys.argv[4:]:
            text = read_text(doc)
            ids = tok.encode(text, add_special_tokens=False).ids
            name = os.path.splitext(os.path.basename(doc))[0]
            array.array("I", ids).tofile(open(os.path.join(out_dir, name + ".ids.u32"), "wb"))
            print(json.dumps({"doc": name, "bytes": len(text.encode("utf-8")), "tokens": len(ids),
                              "round_trip": tok.decode(ids, skip_special_tokens=False) == text}))
    elif mode == "bench":
        args = sys.argv[3:]
        threads = os.cpu_count()
        if "--threads" in args:
            i = args.index("--threads")
            threads = int(args[i + 1])
            del args[i:i + 2]
        for doc in args:
            text = read_text(doc)
            mb = len(text.encode("utf-8")) / 1e6
            t0 = time.perf_counter()
            tok.encode(text, add_special_tokens=False)
            cold = time.perf_counter() - t0
            warm = best_time(lambda: tok.encode(text, add_special_tokens=False))
            docs = split_documents(text, threads * 16)
            batch = best_time(lambda: tok.encode_batch(docs, add_special_tokens=False))
            print(json.dumps({"doc": os.path.basename(doc), "tokenizers": tokenizers.__version__,
                              "single_thread_mb_per_s": mb / warm, "first_pass_mb_per_s": mb / cold,
                              "threads": threads, "documents": len(docs), "batch_mb_per_s": mb / batch}))
    else:
        sys.exit("usage: encode_reference.py ids|bench ...")


if __name__ == "__main__":
    main()
