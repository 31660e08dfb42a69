#!/usr/bin/env python3
"""PyTorch peer throughput of the performance goals, measured on the GPU oft runs on.

Peers (one training step = forward, backward, optimizer step; random tokens; random init):
  gpt2_vanilla  GPT-2 124M (12 x 768, 12 heads, vocab 50304, T=1024, B=16), hand-written
                nanoGPT style: bf16 autocast, torch.compile, F.scaled_dot_product_attention
                (is_causal, the flash kernel), fused AdamW.
  gpt2_clipped  the same with clipped softmax clip((zeta - gamma) softmax + gamma, 0, 1),
                gamma = -0.025, zeta = 1: the T x T probabilities are materialised
                (scores -> softmax -> clip -> @ V), compiled.
  gpt2_gated    the same with conditional per-token gated attention (a per-head linear gate
                on the head's slice of the attention input, sigmoid, scaling each head's
                context before the output projection), flash attention, compiled.
                Not in the default set (compile time): --only gpt2_gated or --all.
  opt_125m      Hugging Face transformers OPTForCausalLM with the facebook/opt-125m config
                (768, 12 layers, 12 heads, FFN 3072 ReLU, vocab 50272, 2048 positions;
                created locally, random init, dropout off), B=16, T=512,
                attn_implementation="eager", bf16 autocast, fused AdamW, not compiled.
  bert_base     Hugging Face BertForMaskedLM with the bert-base config (random init, dropout
                off), B=32, T=128, 15% of the positions predicted, eager attention, bf16
                autocast, fused AdamW, not compiled.

Per peer: warm-up steps (the first one compiles), then --steps timed steps between
torch.cuda.synchronize() calls. Prints
  peer NAME: X tokens/s (step Y ms, peak mem Z GiB)
An error in one peer is printed ("peer NAME: ERROR ...") and the others still run; the exit
status is 1 when any peer failed.

Usage: python3 scripts/torch/peers.py [--only NAME[,NAME...]] [--steps N] [--warmup N] [--all]
                                     [--accum N]
  e.g. python3 scripts/torch/peers.py --only opt_125m --accum 12   (the OPT-125m preset's
       16 x 12 batch, against `oft bench opt_125m_vanilla` without overrides)
"""

import argparse
import gc
import math
import sys
import time
import traceback


# Micro-batches per optimizer step (--accum): the step runs ACCUM forward / backward passes of
# the peer's batch, then the optimizer, as oft's train.grad_accum does.
ACCUM = 1


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------- nanoGPT-style GPT-2

def build_gpt2(attn, n_layer=12, n_head=12, d_model=768, vocab=50304, block_size=1024,
               gamma=-0.025, zeta=1.0):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(d_model, 3 * d_model)
            self.c_proj = nn.Linear(d_model, d_model)
            if attn == "gated":
                # Per-head linear gate: logit[n, h] = x[n, h*D:(h+1)*D] . w[h] + b[h].
                self.gate_w = nn.Parameter(torch.randn(n_head, d_model // n_head) * 0.02)
                self.gate_b = nn.Parameter(torch.full((n_head,), math.log(0.25 / 0.75)))
            if attn == "clipped":
                self.register_buffer(
                    "mask", torch.ones(block_size, block_size, dtype=torch.bool).tril(),
                    persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            H, D = n_head, C // n_head
            q, k, v = self.c_attn(x).split(C, dim=2)
            q = q.view(B, T, H, D).transpose(1, 2)
            k = k.view(B, T, H, D).transpose(1, 2)
            v = v.view(B, T, H, D).transpose(1, 2)
            if attn == "clipped":
                s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
                s = s.masked_fill(~self.mask[:T, :T], float("-inf"))
                p = F.softmax(s, dim=-1)
                p = torch.clamp((zeta - gamma) * p + gamma, 0.0, 1.0).to(v.dtype)
                y = p @ v
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2)  # [B, T, H, D]
            if attn == "gated":
                logits = torch.einsum("bthd,hd->bth", x.view(B, T, H, D), self.gate_w) + self.gate_b
                y = y * torch.sigmoid(logits).unsqueeze(-1).to(y.dtype)
            return self.c_proj(y.contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(d_model, 4 * d_model)
            self.c_proj = nn.Linear(4 * d_model, d_model)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d_model)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(d_model)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d_model)
            self.wpe = nn.Embedding(block_size, d_model)
            self.h = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for mod in self.modules():
                if isinstance(mod, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(mod.weight, std=0.02)
                    if isinstance(mod, nn.Linear) and mod.bias is not None:
                        nn.init.zeros_(mod.bias)

        def forward(self, idx, targets):
            B, T = idx.shape
            pos = torch.arange(T, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))

    return GPT()


def gpt2_peer(attn):
    def make():
        import torch
        B, T, V = 16, 1024, 50304
        model = build_gpt2(attn).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95),
                                weight_decay=0.1, fused=True)
        cmodel = torch.compile(model)
        x = torch.randint(0, V, (B, T), device="cuda")
        y = torch.randint(0, V, (B, T), device="cuda")

        def step():
            for _ in range(ACCUM):
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    loss = cmodel(x, y) / ACCUM
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
        return step, ACCUM * B * T, (model, opt)
    return make


# --------------------------------------------------------------------------- Hugging Face peers

def set_eager(config):
    try:
        config._attn_implementation = "eager"
    except Exception:  # older/newer attribute handling: fall back to the plain field
        config.__dict__["_attn_implementation"] = "eager"


def hf_peer(kind):
    def make():
        import torch
        if kind == "opt":
            from transformers import OPTConfig, OPTForCausalLM
            B, T = 16, 512
            cfg = OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12,
                            ffn_dim=3072, num_attention_heads=12, max_position_embeddings=2048,
                            activation_function="relu", do_layer_norm_before=True,
                            word_embed_proj_dim=768, dropout=0.0, attention_dropout=0.0,
                            layerdrop=0.0, enable_bias=True, use_cache=False)
            set_eager(cfg)
            model = OPTForCausalLM(cfg)
            V = cfg.vocab_size
        else:
            from transformers import BertConfig, BertForMaskedLM
            B, T = 32, 128
            cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                             num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                             max_position_embeddings=512, type_vocab_size=2,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            set_eager(cfg)
            model = BertForMaskedLM(cfg)
            V = cfg.vocab_size
        impl = getattr(model.config, "_attn_implementation", "?")
        if impl != "eager" and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
            impl = getattr(model.config, "_attn_implementation", "?")
        log("  %s: attention implementation %s, %.1fM parameters"
            % (type(model).__name__, impl, sum(p.numel() for p in model.parameters()) / 1e6))
        model = model.cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95),
                                weight_decay=0.1, fused=True)
        x = torch.randint(0, V, (B, T), device="cuda")
        if kind == "opt":
            labels = x  # the model shifts them
        else:
            labels = torch.randint(0, V, (B, T), device="cuda")
            keep = torch.rand(B, T, device="cuda") < 0.15
            labels = torch.where(keep, labels, torch.full_like(labels, -100))

        def step():
            for _ in range(ACCUM):
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    out = model(input_ids=x, labels=labels)
                (out.loss / ACCUM).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss
        return step, ACCUM * B * T, (model, opt)
    return make


PEERS = {
    "gpt2_vanilla": gpt2_peer("flash"),
    "gpt2_clipped": gpt2_peer("clipped"),
    "gpt2_gated": gpt2_peer("gated"),
    "opt_125m": hf_peer("opt"),
    "bert_base": hf_peer("bert"),
}
DEFAULT = ["gpt2_vanilla", "gpt2_clipped", "opt_125m", "bert_base"]


def measure(name, make, steps, warmup):
    import torch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step, tokens, keep = make()
    for _ in range(warmup):
        loss = step()
    torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    lv = float(loss.item())
    if not math.isfinite(lv):
        raise RuntimeError("non-finite loss %r after warm-up" % lv)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t1) / steps
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    log("peer %s: %.0f tokens/s (step %.1f ms, peak mem %.2f GiB)"
        % (name, tokens / dt, dt * 1e3, peak))
    log("  %s: loss %.3f after warm-up, setup + warm-up %.0f s" % (name, lv, setup))
    del step, keep


def main(argv):
    ap = argparse.ArgumentParser(description="PyTorch peer throughput (see the module docstring)")
    ap.add_argument("--only", default="", help="comma-separated peers: " + ", ".join(PEERS))
    ap.add_argument("--all", action="store_true", help="every peer, gpt2_gated included")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per peer (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps per peer (default 5)")
    ap.add_argument("--accum", type=int, default=1,
                    help="micro-batches per optimizer step, like oft's train.grad_accum "
                         "(default 1; the OPT-125m preset trains with 12)")
    a = ap.parse_args(argv[1:])
    global ACCUM
    ACCUM = max(1, a.accum)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or (list(PEERS) if a.all else DEFAULT)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        print("peers.py: unknown peer(s) %s; choose from %s" % (unknown, ", ".join(PEERS)),
              file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("peers.py: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("peers.py: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log("peers on %s, torch %s, %d timed steps after %d warm-up, %d micro-batch(es) per step"
        % (torch.cuda.get_device_name(0), torch.__version__, a.steps, max(1, a.warmup), ACCUM))
    failed = 0
    for n in names:
        try:
            measure(n, PEERS[n], max(1, a.steps), max(1, a.warmup))
        except Exception as e:  # report and go on with the next peer
            failed += 1
            msg = str(e).strip().splitlines()
            log("peer %s: ERROR %s: %s" % (n, type(e).__name__, msg[0] if msg else ""))
            tb = traceback.format_exc().strip().splitlines()
            for line in tb[-6:]:
                log("  | " + line)
        finally:
            gc.collect()
            try:
                torch._dynamo.reset()
            except Exception:
                pass
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
