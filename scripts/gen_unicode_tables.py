#!/usr/bin/env python3
"""Generates src/data/unicode_tables.cpp: the code-point class ranges (letter / number /
whitespace) that the GPT-2 pre-tokeniser (src/data/gpt2_bpe.cpp) uses for the \\p{L}, \\p{N}
and \\s of OpenAI's regex

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

Regenerate (from the repository root):

    python3 scripts/gen_unicode_tables.py                      # default: --source regex
    python3 scripts/gen_unicode_tables.py --source unicodedata

Sources:
  regex        (default) ask the third-party `regex` module (pip install regex), the very
               engine OpenAI's encoder.py runs, what \\p{L}, \\p{N} and \\s match. This is what
               makes oft byte-exact with encoder.py.
  unicodedata  Python's own unicodedata: general categories L* and N*; whitespace is the
               Unicode White_Space property (what `regex` matches with \\s). Note that
               str.isspace() is NOT the same set: it also accepts U+001C..U+001F, which \\s
               of the `regex` module does not, so it is not used.

The two sources differ only in the Unicode version of their data (code points assigned after
the older version are "other" there).
"""
import argparse
import os
import sys
import unicodedata

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NAMES = {LETTER: "kLetter", NUMBER: "kNumber", SPACE: "kSpace"}

# Unicode White_Space (PropList.txt; unchanged since Unicode 6.0). Equal to `regex`'s \s.
WHITE_SPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


def classes_from_regex():
    import regex  # noqa: PLC0415

    letter = regex.compile(r"\p{L}")
    number = regex.compile(r"\p{N}")
    space = regex.compile(r"\s")
    out = bytearray(0x110000)
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates never occur in valid UTF-8
        ch = chr(cp)
        if space.match(ch):
            out[cp] = SPACE
        elif letter.match(ch):
            out[cp] = LETTER
        elif number.match(ch):
            out[cp] = NUMBER
    version = f"regex {regex.__version__}"
    return out, version


def classes_from_unicodedata():
    out = bytearray(0x110000)
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat.startswith("L"):
            out[cp] = LETTER
        elif cat.startswith("N"):
            out[cp] = NUMBER
    for cp in WHITE_SPACE:
        out[cp] = SPACE
    return out, f"unicodedata {unicodedata.unidata_version}"


def ranges(classes):
    res = []
    start = 0
    for cp in range(1, 0x110001):
        if cp == 0x110000 or classes[cp] != classes[start]:
            if classes[start] != OTHER:
                res.append((start, cp - 1, classes[start]))
            start = cp
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["regex", "unicodedata"], default="regex")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "src", "data", "unicode_tables.cpp"))
    args = ap.parse_args()
    if args.source == "regex":
        try:
            classes, version = classes_from_regex()
        except ImportError:
            sys.exit("gen_unicode_tables.py: the `regex` module is missing; `pip install regex` "
                     "or pass --source unicodedata")
    else:
        classes, version = classes_from_unicodedata()
    rs = ranges(classes)
    lines = [
        "// Code-point class ranges for the GPT-2 pre-tokeniser (letter = \\p{L}, number = \\p{N},",
        "// space = \\s of the `regex` module that OpenAI's encoder.py uses). GENERATED, do not edit:",
        "// regenerate with `python3 scripts/gen_unicode_tables.py` (see its docstring).",
        f"// Source: {version} (python {sys.version.split()[0]}), {len(rs)} ranges.",
        '#include "data/unicode_tables.h"',
        "",
        "namespace oft::unicode {",
        "",
        "const CodeRange kCodeRanges[] = {",
    ]
    per_line = 3
    for i in range(0, len(rs), per_line):
        chunk = rs[i:i + per_line]
        lines.append("    " + " ".join(f"{{0x{a:05X}, 0x{b:05X}, {NAMES[c]}}}," for a, b, c in chunk))
    lines += [
        "};",
        "",
        "const int kNumCodeRanges = static_cast<int>(sizeof(kCodeRanges) / sizeof(kCodeRanges[0]));",
        "",
        "}  // namespace oft::unicode",
        "",
    ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}: {len(rs)} ranges from {version}")


if __name__ == "__main__":
    main()
