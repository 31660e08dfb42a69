#!/usr/bin/env python3
"""Generates src/data/unicode_nfd.cpp: the Unicode data that the BERT WordPiece tokenizer
(src/data/wordpiece.cpp) needs to reproduce Python's BertTokenizer exactly, taken from this
Python's own `unicodedata` and `str.lower()`:

  * per-code-point flags: general category C* (control: dropped by _clean_text), Zs (space),
    P* (punctuation), Mn (stripped after NFD), plus the Cased / Case_Ignorable properties that
    str.lower() consults for the final sigma;
  * the nonzero canonical combining classes (for NFD's canonical reordering);
  * the full canonical decomposition of every code point (unicodedata.normalize("NFD", ch)),
    Hangul syllables excluded (wordpiece.cpp decomposes those arithmetically);
  * str.lower() of every code point (the final-sigma rule is applied in wordpiece.cpp).

Regenerate (from the repository root, stdlib only):

    python3 scripts/gen_unicode_nfd.py [--out src/data/unicode_nfd.cpp]

The Unicode version is that of the running Python (3.11: 14.0.0); the generated file records
it. Hugging Face's BertTokenizer gives the same tokens under any Python whose Unicode version
matches; newer versions differ only on code points assigned since.
"""
import argparse
import os
import sys
import unicodedata

N = 0x110000
# Flag bits; must match unicode_nfd.h.
CONTROL, SPACE_SEP, PUNCT, MN, CASED, CASE_IGNORABLE = (1 << i for i in range(6))
SIGMA, FINAL_SIGMA = "\u03a3", "\u03c2"


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def is_hangul_syllable(cp):
    return 0xAC00 <= cp <= 0xD7A3


def lower_final(s):
    """Whether str.lower() turns the capital sigma that ends s into the final form."""
    return s.lower()[-1] == FINAL_SIGMA


def sigma_context_props(ch):
    """(cased, case_ignorable) as CPython's handle_capital_sigma() sees them. Python does not
    expose the properties, so they are probed: the character before a capital sigma is skipped
    when case-ignorable, and must otherwise be cased for the final form."""
    after_letter = lower_final("a" + ch + SIGMA)
    after_digit = lower_final("1" + ch + SIGMA)
    ignorable = after_letter and not after_digit
    cased = after_digit  # only meaningful for non-ignorable characters
    return cased, ignorable


def check_sigma_props(flags):
    """The probed properties must also explain the look-ahead half of the final-sigma rule."""
    for cp in range(N):
        if is_surrogate(cp):
            continue
        f = flags[cp]
        want = bool(f & CASE_IGNORABLE) or not (f & CASED)
        assert (("a" + SIGMA + chr(cp)).lower()[1] == FINAL_SIGMA) == want, hex(cp)


def flags_of(cp):
    ch = chr(cp)
    cat = unicodedata.category(ch)
    f = 0
    if cat[0] == "C":
        f |= CONTROL
    if cat == "Zs":
        f |= SPACE_SEP
    if cat[0] == "P":
        f |= PUNCT
    if cat == "Mn":
        f |= MN
    if not is_surrogate(cp):
        cased, ignorable = sigma_context_props(ch)
        if cased:
            f |= CASED
        if ignorable:
            f |= CASE_IGNORABLE
    return f


def runs(values):
    """[(start, value)] for each maximal run of equal values."""
    out = []
    for cp, v in enumerate(values):
        if not out or out[-1][1] != v:
            out.append((cp, v))
    return out


def lower_runs(single):
    """Groups (cp, lower) pairs into (start, count, stride, delta) runs."""
    out = []
    for cp, lo in single:
        d = lo - cp
        if out:
            start, count, stride, delta = out[-1]
            last = start + (count - 1) * stride
            if delta == d and ((count == 1 and cp - last in (1, 2)) or cp - last == stride):
                out[-1] = (start, count + 1, cp - last if count == 1 else stride, delta)
                continue
        out.append((cp, 1, 1, d))
    return out


def emit_array(lines, decl, values, width=112):
    lines.append(decl + " = {")
    cur = "   "
    for v in values:
        item = f" {v},"
        if len(cur) + len(item) > width:
            lines.append(cur)
            cur = "   "
        cur += item
    if cur.strip():
        lines.append(cur)
    lines.append("};")


def check_assumptions():
    # The tokenizer relies on these; fail loudly if a future Unicode version breaks one.
    extra_space = [cp for cp in range(N) if chr(cp).isspace()
                   and unicodedata.category(chr(cp)) not in ("Cc", "Zs")]
    assert extra_space == [0x2028, 0x2029], f"str.isspace() outside Cc/Zs: {extra_space}"
    for cp in range(N):
        if is_surrogate(cp):
            continue
        ch = chr(cp)
        low = ch.lower()
        if len(low) > 1:
            assert cp == 0x130, f"unexpected multi-character lowercase U+{cp:04X}"
        f = flags_of(ord(low[0])) if low != ch else None
        if f is not None:
            # Lower-casing never changes whether a character is punctuation or control.
            assert (f & (PUNCT | CONTROL)) == (flags_of(cp) & (PUNCT | CONTROL)), hex(cp)
        nfd = unicodedata.normalize("NFD", ch)
        if nfd != ch and unicodedata.category(ch) != "Zs":
            for d in nfd:  # NFD never creates spaces or control characters (except from Zs)
                c = unicodedata.category(d)
                assert c[0] != "C" and c != "Zs" and not d.isspace(), hex(cp)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "src", "data", "unicode_nfd.cpp"))
    args = ap.parse_args()
    check_assumptions()

    flags = [flags_of(cp) for cp in range(N)]
    check_sigma_props(flags)
    flag_runs = runs(flags)
    ccc = []  # runs (start, count, class) of consecutive code points with one nonzero class
    for cp in range(N):
        c = unicodedata.combining(chr(cp))
        if not c:
            continue
        if ccc and ccc[-1][0] + ccc[-1][1] == cp and ccc[-1][2] == c:
            ccc[-1] = (ccc[-1][0], ccc[-1][1] + 1, c)
        else:
            ccc.append((cp, 1, c))
    nfd = []
    for cp in range(N):
        if is_surrogate(cp) or is_hangul_syllable(cp):
            continue
        d = unicodedata.normalize("NFD", chr(cp))
        if d != chr(cp):
            nfd.append((cp, [ord(c) for c in d]))
    single, multi = [], []
    for cp in range(N):
        if is_surrogate(cp):
            continue
        low = chr(cp).lower()
        if low != chr(cp):
            (single if len(low) == 1 else multi).append((cp, [ord(c) for c in low]))
    lruns = lower_runs([(cp, lo[0]) for cp, lo in single])

    def deltas(xs):
        prev, out = 0, []
        for x in xs:
            out.append(x - prev)
            prev = x
        return out

    ver = unicodedata.unidata_version
    lines = [
        "// Unicode data for the BERT WordPiece tokenizer (wordpiece.cpp): code-point flags,",
        "// canonical combining classes, canonical decompositions (NFD) and str.lower() mappings.",
        "// GENERATED, do not edit: regenerate with `python3 scripts/gen_unicode_nfd.py` (see its",
        "// docstring). Declarations and encodings: unicode_nfd.h.",
        f"// Source: Python {sys.version.split()[0]} unicodedata (Unicode {ver}); "
        f"{len(flag_runs)} flag runs,",
        f"// {len(ccc)} combining-class runs, {len(nfd)} decompositions, {len(lruns)} + "
        f"{len(multi)} lowercase runs.",
        "#include \"data/unicode_nfd.h\"",
        "",
        "namespace oft::unicode_nfd {",
        "",
        f"const char kUnicodeVersion[] = \"{ver}\";",
        f"const int kNumFlagRuns = {len(flag_runs)};",
        f"const int kNumCccRuns = {len(ccc)};",
        f"const int kNumDecomp = {len(nfd)};",
        f"const int kNumLowerRuns = {len(lruns)};",
        f"const int kNumLowerMulti = {len(multi)};",
        "",
    ]
    emit_array(lines, "const uint32_t kFlagRunStartDelta[]", deltas([s for s, _ in flag_runs]))
    emit_array(lines, "const uint8_t kFlagRunValue[]", [v for _, v in flag_runs])
    emit_array(lines, "const uint32_t kCccRuns[]", [x for run in ccc for x in run])
    emit_array(lines, "const uint32_t kDecompCpDelta[]", deltas([cp for cp, _ in nfd]))
    lens = "".join(str(len(d)) for _, d in nfd)
    lines.append("const char kDecompLen[] =")
    for i in range(0, len(lens), 100):
        lines.append(f'    "{lens[i:i + 100]}"' + (";" if i + 100 >= len(lens) else ""))
    emit_array(lines, "const uint32_t kDecompPool[]", [c for _, d in nfd for c in d])
    emit_array(lines, "const int32_t kLowerRuns[]",
               [x for s, n, st, d in lruns for x in (s, n, st, d)])
    emit_array(lines, "const uint32_t kLowerMulti[]",
               [x for cp, lo in multi for x in (cp, len(lo), *lo, *([0] * (3 - len(lo))))])
    lines += ["", "}  // namespace oft::unicode_nfd", ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}: Unicode {ver}, {len(flag_runs)} flag runs, {len(ccc)} ccc runs, "
          f"{len(nfd)} decompositions, {len(lruns)} lowercase runs, {len(lines)} lines")


if __name__ == "__main__":
    main()
