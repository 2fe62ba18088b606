#!/usr/bin/env python3
"""Trains small byte-level BPE tokenizers of several shapes with Hugging Face `tokenizers` and
records their encodings of the parity documents, so that engram's loader is tested on
tokenizer.json files other than DeepSeek-V3's (GPT-2 style, Llama-3 style, and one that uses
every supported normalizer, split behaviour and added-token flag).

Usage: make_synthetic_tokenizers.py OUT.json TRAIN.txt... -- DOC.txt...
Writes {"tokenizers": {name: tokenizer.json object}, "encodings": {name: {doc: [ids]}}}.
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build(name):
    if name == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        vocab = 2000
    elif name == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        vocab = 3000
    elif name == "mixed":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("``", '"'),
            normalizers.Replace(Regex(r"\s+$"), ""), normalizers.Strip(left=True, right=False),
            normalizers.Prepend("^")])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split("-", behavior="merged_with_previous"),
            pre_tokenizers.Split(Regex(r"[.,;]"), behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"\p{Han}+"), behavior="contiguous"),
            pre_tokenizers.Split(Regex(r"\s"), behavior="removed", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
        vocab = 1500
    else:
        raise ValueError(name)
    tok.decoder = decoders.ByteLevel()
    return tok, vocab


def main():
    sep = sys.argv.index("--")
    out, train_files, docs = sys.argv[1], sys.argv[2:sep], sys.argv[sep + 1:]
    result = {"tokenizers": {}, "encodings": {}}
    for name in ("gpt2", "llama3", "mixed"):
        tok, vocab = build(name)
        trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train(train_files, trainer)
        tok.add_special_tokens([AddedToken("<|end|>", special=True, normalized=False)])
        tok.add_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True, normalized=False),
                        AddedToken("hello world", single_word=True, normalized=True),
                        AddedToken("ZZ", normalized=True), AddedToken("<tool>", normalized=False)])
        result["tokenizers"][name] = json.loads(tok.to_str())
        enc = {}
        for doc in docs:
            text = open(doc, "rb").read().decode("utf-8")
            enc[os.path.basename(doc)] = tok.encode(text, add_special_tokens=False).ids
        result["encodings"][name] = enc
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
