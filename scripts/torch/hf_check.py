#!/usr/bin/env python3
"""Hugging Face interop check: oft import-hf / export-hf / logits / tokenizers against transformers.

In one call, on a machine with torch + transformers (no network needed, nothing downloaded):
  1. builds tokenizers from the GPT-2 BPE and bert-base-uncased WordPiece files shipped in oft's
     data/tokenizers/ (as tokenizer.json, as vocab.json + merges.txt, as vocab.txt with a cased
     tokenizer_config.json);
  2. creates randomly initialised transformers models and saves them with save_pretrained:
       gpt2_small   GPT-2, 2 x 64,  tokenizer.json only
       gpt2_wide    GPT-2, 3 x 128, n_inner 320, sharded (max_shard_size), vocab.json + merges.txt
       opt_small    OPT pre-norm, 2 x 64, saved in bfloat16, no tokenizer files
       opt_350m     OPT-350m layout: post-norm, project_in / project_out (word_embed_proj_dim 32),
                    2 x 64, saved in float16, no tokenizer files
       bert_small   BertForMaskedLM, 2 x 64, tokenizer.json (uncased)
       bert_wide    BertForMaskedLM, 3 x 128, vocab.txt + tokenizer_config.json (cased)
  3. imports each with `oft import-hf` and compares `oft logits` with transformers' float32 logits
     of the saved model (eager attention): oft on the CPU backend in f32 and, when the oft build
     has CUDA and a GPU is present, on the GPU in bf16;
  4. compares `oft tokenizer encode` on the imported run with the saved model's transformers
     tokenizer (AutoTokenizer, add_special_tokens=False), token for token, on a mixed sample
     (ASCII, accents, CJK, emoji, whitespace runs, punctuation);
  5. exports every imported model with `oft export-hf`, loads the export with from_pretrained and
     compares its logits (and its tokenizer) with the original transformers model;
  6. trains oft's own tiny OPT (vanilla) and gated-attention models for a few steps, exports them:
     the vanilla one must give the same logits in transformers as in oft; the gated one must be
     marked as an oft variant and come back bit for bit through import-hf.

Prints one PASS / FAIL / SKIP line per check with the max abs and relative error (max abs error
over max |reference|) and the tolerance, then a summary; exit status 1 when a check fails.

Tolerances (relative to the largest reference logit):
  oft CPU f32 vs transformers f32     2e-5  (same weights, f32 arithmetic in another order)
  oft GPU bf16 vs transformers f32    3e-2  (bf16 activations and matrix inputs, f32 accumulation)
  export in transformers vs original  1e-6  (the same weights in the same code: expect 0)
  oft native run: transformers vs oft 2e-5
  tokenizations                       exact

Usage:
  python3 scripts/torch/hf_check.py [--oft PATH] [--work DIR] [--keep] [--no-cuda]
The oft binary: --oft, else $OFT_BIN, else build-gpu/bin/oft, gpu-bundle/bin/oft, build/bin/oft.
Run from the repository root (oft finds its data/ and configs/ from its binary or $OFT_HOME).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

TOL = {"cpu_f32": 2e-5, "cuda_bf16": 3e-2, "export": 1e-6, "native": 2e-5}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SAMPLE = (
    "Hello world! It's 2024: we've got naïve café owners, Ångström units and résumés.\n"
    "ÉCOLE NORMALE — «quotes», ‘single’ and “double”; x = f(y) + 3.14e-5 # code\n"
    "CJK: 中文字符和日本語のかな, 한국어 텍스트. Emoji: 🙂👍🏽🎉 ok?!\n"
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,\n\n\nthree newlines,    trailing   \n"
    "Punctuation!!! ... ??? (nested [brackets] {braces}) @user #tag $5.00 50% a&b <tag/>\n"
    "Numbers 1234567890 0.5 -17 1e10; Ünïcödé MIXED case WORDS and déjà vu.\n"
)

results = []  # (name, check, status, max_abs, rel, tol, detail)


def record(name, check, ok, max_abs=None, rel=None, tol=None, detail=""):
    status = "PASS" if ok is True else ("SKIP" if ok is None else "FAIL")
    results.append((name, check, status, max_abs, rel, tol, detail))
    fmt = lambda v: "-" if v is None else "%.3e" % v
    print("%-4s %-12s %-28s max abs %-10s rel %-10s tol %-8s %s" % (
        status, name, check, fmt(max_abs), fmt(rel), fmt(tol), detail), flush=True)


def find_oft(arg):
    for c in [arg, os.environ.get("OFT_BIN")] + [
            os.path.join(ROOT, p) for p in ("build-gpu/bin/oft", "gpu-bundle/bin/oft", "build/bin/oft")]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    sys.exit("hf_check: no oft binary found: pass --oft PATH or set OFT_BIN")


def run(cmd, check=True):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError("%s\n--> exit %d\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def compare(a, b):
    """max |a - b| and that over max |b| (float64)."""
    import torch
    a = a.double()
    b = b.double()
    if a.shape != b.shape:
        raise RuntimeError("shape %s vs %s" % (tuple(a.shape), tuple(b.shape)))
    m = (a - b).abs().max().item()
    return m, m / max(b.abs().max().item(), 1e-30)


def from_pretrained(cls, path):
    import torch
    try:  # transformers 5: dtype=; 4.x: torch_dtype=
        m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        m = cls.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    return m.float().eval()


def hf_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# ------------------------------------------------------------------------------ tokenizers

def gpt2_files():
    d = os.path.join(ROOT, "data/tokenizers/gpt2")
    return os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")


def bert_vocab():
    return os.path.join(ROOT, "data/tokenizers/bert-base-uncased/vocab.txt")


def save_gpt2_tokenizer(dir_, form):
    """form 'json': tokenizer.json only (a fast tokenizer, what transformers 5 saves);
    'files': vocab.json + merges.txt + tokenizer_config.json."""
    enc, bpe = gpt2_files()
    if form == "files":
        shutil.copy(enc, os.path.join(dir_, "vocab.json"))
        shutil.copy(bpe, os.path.join(dir_, "merges.txt"))
        with open(os.path.join(dir_, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                       "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>", "model_max_length": 1024}, f)
        return
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE.from_file(enc, bpe))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(dir_)
    for f in ("vocab.json", "merges.txt"):  # keep tokenizer.json as the only vocabulary file
        if os.path.exists(os.path.join(dir_, f)):
            os.remove(os.path.join(dir_, f))


def save_bert_tokenizer(dir_, form):
    """form 'json': uncased tokenizer.json only; 'cased': vocab.txt + do_lower_case=false."""
    if form == "cased":
        shutil.copy(bert_vocab(), os.path.join(dir_, "vocab.txt"))
        with open(os.path.join(dir_, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": False,
                       "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}, f)
        return
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordPiece.from_file(bert_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]",
                            mask_token="[MASK]").save_pretrained(dir_)
    if os.path.exists(os.path.join(dir_, "vocab.txt")):
        os.remove(os.path.join(dir_, "vocab.txt"))


# ------------------------------------------------------------------------------ models

def model_specs():
    from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel,
                              OPTConfig, OPTForCausalLM)
    gpt2 = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256,
                eos_token_id=50256)
    opt = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)
    bert = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return [
        dict(name="gpt2_small", cls=GPT2LMHeadModel, tok=("gpt2", "json"), save={},
             cfg=GPT2Config(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=128, **gpt2)),
        dict(name="gpt2_wide", cls=GPT2LMHeadModel, tok=("gpt2", "files"),
             save=dict(max_shard_size="8MB"),
             cfg=GPT2Config(vocab_size=50257, n_embd=128, n_layer=3, n_head=4, n_inner=320,
                            n_positions=256, **gpt2)),
        dict(name="opt_small", cls=OPTForCausalLM, tok=None, save={}, dtype="bfloat16",
             cfg=OPTConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, ffn_dim=256,
                           num_attention_heads=4, max_position_embeddings=128,
                           word_embed_proj_dim=64, do_layer_norm_before=True, **opt)),
        dict(name="opt_350m", cls=OPTForCausalLM, tok=None, save={}, dtype="float16",
             cfg=OPTConfig(vocab_size=3000, hidden_size=64, num_hidden_layers=2, ffn_dim=256,
                           num_attention_heads=4, max_position_embeddings=128,
                           word_embed_proj_dim=32, do_layer_norm_before=False, **opt)),
        dict(name="bert_small", cls=BertForMaskedLM, tok=("bert", "json"), save={},
             cfg=BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=256,
                            max_position_embeddings=128, **bert)),
        dict(name="bert_wide", cls=BertForMaskedLM, tok=("bert", "cased"), save={},
             cfg=BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=320,
                            max_position_embeddings=256, **bert)),
    ]


def randomize(model, seed):
    """Random weights everywhere (norm gains / biases too), so every tensor matters."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif n.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.tie_weights()


def oft_logits(oft, run_dir, ids_file, out, extra):
    p = run([oft, "logits", run_dir, "--ids", ids_file, "--out", out, "--top", "0"] + extra,
            check=False)
    if p.returncode != 0:
        return None, (p.stdout + p.stderr).strip().splitlines()[-1:]
    from safetensors.torch import load_file
    return load_file(out)["logits"].float(), None


def cuda_usable(oft, work):
    """Whether this oft build can run on a GPU here: one tiny CUDA forward pass decides."""
    ids = os.path.join(work, "probe_ids.txt")
    with open(ids, "w") as f:
        f.write("1 2 3\n")
    rdir = os.path.join(work, "probe_run")
    data = os.path.join(work, "probe_data")
    p = run([oft, "data", "prepare", "data/moby-dick/moby_dick.txt", "-t", "gpt2", "--max-mb",
             "0.05", "-q", "-o", data], check=False)
    if p.returncode == 0:
        p = run([oft, "train", "tiny", "model.n_layer=1", "train.steps=1", "train.eval_batches=1",
                 "data.train=%s/train.bin" % data, "data.val=%s/val.bin" % data,
                 "train.device=cuda", "-q", "--run-dir", rdir], check=False)
    if p.returncode != 0:
        return False, (p.stdout + p.stderr).strip().splitlines()[-1]
    return True, ""


def check_model(spec, oft, work, torch, use_cuda, cuda_reason):
    from transformers import AutoTokenizer
    name, cls = spec["name"], spec["cls"]
    src = os.path.join(work, "hf", name)
    os.makedirs(src, exist_ok=True)
    torch.manual_seed(0)
    model = cls(spec["cfg"])
    randomize(model, 1 + len(results))
    dtype = spec.get("dtype")
    if dtype:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(src, **spec["save"])
    if spec["tok"]:
        (save_gpt2_tokenizer if spec["tok"][0] == "gpt2" else save_bert_tokenizer)(src, spec["tok"][1])
    shards = [f for f in os.listdir(src) if f.endswith(".safetensors")]
    print("---- %s: %s, %d safetensors file(s)%s%s" % (
        name, cls.__name__, len(shards), ", " + dtype if dtype else "",
        ", tokenizer " + "/".join(spec["tok"]) if spec["tok"] else ", no tokenizer"), flush=True)
    ref_model = from_pretrained(cls, src)  # the saved weights, in float32
    V = spec["cfg"].vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, V, (2, 48), generator=g)
    ids_file = os.path.join(work, name + "_ids.txt")
    with open(ids_file, "w") as f:
        for row in ids.tolist():
            f.write(" ".join(map(str, row)) + "\n")
    ref = hf_logits(ref_model, ids)

    rdir = os.path.join(work, "runs", name)
    p = run([oft, "import-hf", src, "--out", rdir], check=False)
    if p.returncode != 0:
        record(name, "import-hf", False, detail=(p.stdout + p.stderr).strip().splitlines()[-1])
        return
    record(name, "import-hf", True, detail="%d notes" % p.stdout.count("note:"))

    got, err = oft_logits(oft, rdir, ids_file, os.path.join(work, name + "_cpu.safetensors"),
                          ["train.device=cpu"])
    if got is None:
        record(name, "logits cpu f32", False, detail=" ".join(err))
    else:
        m, r = compare(got, ref)
        record(name, "logits cpu f32", r <= TOL["cpu_f32"], m, r, TOL["cpu_f32"])
    if use_cuda:
        got, err = oft_logits(oft, rdir, ids_file, os.path.join(work, name + "_cuda.safetensors"),
                              ["train.device=cuda", "train.precision=bf16"])
        if got is None:
            record(name, "logits cuda bf16", False, detail=" ".join(err))
        else:
            m, r = compare(got, ref)
            record(name, "logits cuda bf16", r <= TOL["cuda_bf16"], m, r, TOL["cuda_bf16"])
    else:
        record(name, "logits cuda bf16", None, detail=cuda_reason)

    tok = None
    if spec["tok"]:
        tok = AutoTokenizer.from_pretrained(src)
        want = tok(SAMPLE, add_special_tokens=False)["input_ids"]
        sample = os.path.join(work, "sample.txt")
        with open(sample, "w", encoding="utf-8") as f:
            f.write(SAMPLE)
        p = run([oft, "tokenizer", "encode", "-t", rdir, "--file", sample], check=False)
        if p.returncode != 0:
            record(name, "tokenizer", False, detail=p.stderr.strip().splitlines()[-1])
        else:
            have = [int(x) for x in p.stdout.split()]
            first = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b),
                         None if len(have) == len(want) else min(len(have), len(want)))
            detail = "%d tokens, %s" % (len(want), type(tok).__name__)
            if first is not None:
                detail = "first difference at token %d: oft %s vs transformers %s (%r)" % (
                    first, have[first:first + 3], want[first:first + 3],
                    tok.decode(want[max(0, first - 2):first + 3]))
            record(name, "tokenizer", first is None, detail=detail)

    edir = os.path.join(work, "export", name)
    p = run([oft, "export-hf", rdir, edir], check=False)
    if p.returncode != 0:
        record(name, "export-hf", False, detail=(p.stdout + p.stderr).strip().splitlines()[-1])
        return
    try:
        exported = from_pretrained(cls, edir)
        m, r = compare(hf_logits(exported, ids), ref)
        record(name, "export logits", r <= TOL["export"], m, r, TOL["export"])
    except Exception as e:  # noqa: BLE001 - report and go on
        record(name, "export logits", False, detail="%s: %s" % (type(e).__name__, str(e)[:200]))
    if tok is not None:
        etok = AutoTokenizer.from_pretrained(edir)
        same = etok(SAMPLE, add_special_tokens=False)["input_ids"] == want
        record(name, "export tokenizer", same, detail=type(etok).__name__)


def check_native(oft, work, torch):
    """oft's own runs: a standard OPT exports to transformers with the same logits; a gated
    variant is marked as one and round-trips through import-hf exactly."""
    from transformers import OPTForCausalLM
    data = os.path.join(work, "moby_gpt2")
    run([oft, "data", "prepare", "data/moby-dick/moby_dick.txt", "-t", "gpt2", "--max-mb", "0.3",
         "-q", "-o", data])
    ids = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(3))
    ids_file = os.path.join(work, "native_ids.txt")
    with open(ids_file, "w") as f:
        for row in ids.tolist():
            f.write(" ".join(map(str, row)) + "\n")
    common = ["data.train=%s/train.bin" % data, "data.val=%s/val.bin" % data, "data.tokenizer=gpt2",
              "model.n_layer=2", "train.steps=3", "train.eval_batches=1", "train.batch_size=4",
              "data.seq_len=64", "train.device=cpu", "-q"]
    for preset, standard in (("tiny_opt_125m_vanilla", True), ("tiny_opt_125m_gated_attention", False)):
        name = "oft_" + preset.replace("tiny_opt_125m_", "opt_")
        rdir = os.path.join(work, "runs", name)
        run([oft, "train", preset, "--run-dir", rdir] + common)
        edir = os.path.join(work, "export", name)
        p = run([oft, "export-hf", rdir, edir], check=False)
        cfg = json.load(open(os.path.join(edir, "config.json")))
        compatible = cfg.get("oft", {}).get("transformers_compatible")
        mine, err = oft_logits(oft, rdir, ids_file, os.path.join(work, name + ".safetensors"),
                               ["train.device=cpu"])
        if standard:
            record(name, "export marked standard", compatible is True and p.returncode == 0)
            model = from_pretrained(OPTForCausalLM, edir)
            m, r = compare(hf_logits(model, ids), mine)
            record(name, "transformers vs oft", r <= TOL["native"], m, r, TOL["native"])
        else:
            warned = "transformers cannot run" in p.stderr
            record(name, "export marked variant", compatible is False and warned,
                   detail="; ".join(cfg.get("oft", {}).get("variant", [])))
            back = os.path.join(work, "runs", name + "_back")
            run([oft, "import-hf", edir, "--out", back])
            again, err = oft_logits(oft, back, ids_file, os.path.join(work, name + "_back.safetensors"),
                                    ["train.device=cpu"])
            m, r = compare(again, mine)
            record(name, "import(export) logits", m == 0.0, m, r, 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oft", help="oft binary")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--no-cuda", action="store_true", help="skip the GPU comparisons")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        import torch
        import transformers
    except ImportError as e:
        sys.exit("hf_check: needs torch and transformers (%s)" % e)
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    oft = find_oft(args.oft)
    work = args.work or tempfile.mkdtemp(prefix="oft_hf_check_")
    os.makedirs(work, exist_ok=True)
    if args.no_cuda:
        use_cuda, reason = False, "--no-cuda"
    elif not torch.cuda.is_available():
        use_cuda, reason = False, "no GPU visible to torch"
    else:
        use_cuda, reason = cuda_usable(oft, work)
    print("oft %s | transformers %s | torch %s | work %s | GPU check: %s" % (
        oft, transformers.__version__, torch.__version__, work, "yes" if use_cuda else "no (" + reason + ")"),
        flush=True)
    try:
        for spec in model_specs():
            try:
                check_model(spec, oft, work, torch, use_cuda, reason)
            except Exception as e:  # noqa: BLE001 - one model's failure must not hide the others
                record(spec["name"], "error", False, detail="%s: %s" % (type(e).__name__, str(e)[-300:]))
        try:
            check_native(oft, work, torch)
        except Exception as e:  # noqa: BLE001
            record("oft_native", "error", False, detail="%s: %s" % (type(e).__name__, str(e)[-300:]))
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results if r[2] == "FAIL"]
    print("\n%-12s %-28s %-6s %-10s %-10s %-8s" % ("model", "check", "result", "max abs", "rel", "tol"))
    for name, check, status, m, r, tol, _ in results:
        f = lambda v: "-" if v is None else "%.3e" % v
        print("%-12s %-28s %-6s %-10s %-10s %-8s" % (name, check, status, f(m), f(r), f(tol)))
    print("\nhf_check: %d checks, %d passed, %d failed, %d skipped" % (
        len(results), sum(r[2] == "PASS" for r in results), len(failed),
        sum(r[2] == "SKIP" for r in results)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
