#!/usr/bin/env python3
"""Independent PyTorch cross-check of oft's whole-model loss and parameter gradients.

Reads the models that the GoogleTest TorchDump.WriteModelsForTheReference wrote
(OFT_DUMP_DIR=DIR oft_cuda_tests --gtest_filter=TorchDump.*): one sub-directory per preset with
weights.safetensors, batch.safetensors, grads_<source>.safetensors and meta.json. For each model
it builds the transformer again in plain PyTorch from the configuration in meta.json (written
from the model definition, not by calling oft), loads the weights, runs forward and backward on
the batch in float64 on the CPU (the reference) and, when a GPU is present, in float32 on it (a
calibration line: what an honest f32 implementation differs by), and compares oft's loss and
gradients of every source (cpu, cuda_f32, cuda_bf16) with the float64 reference.

Printed per (model, source): the loss difference, the relative L2 error of all gradients
together, and the worst tensor (its error relative to max(its norm, 1e-3 x the RMS tensor norm),
as in tests/cuda/test_cuda_model.cpp). Exit status 1 when a source exceeds its tolerance:
  f32 sources (cpu, cuda_f32): all gradients 1e-4, loss 1e-5 relative;
  bf16 (cuda_bf16):            all gradients 6e-2, loss 1e-2 relative;
and each tensor as in test_cuda_model.cpp: 1e-3 in f32, 0.15 in bf16 (0.6 for the scalar and
per-head tensors of <= 16 values, whose bf16 gradient is one cancelling dot product).
Exit status 2 for unusable input.

Usage: python3 scripts/torch/reference.py DUMP_DIR [--check-files]
  --check-files  only parse and validate the files (needs no torch).
"""

import json
import math
import os
import struct
import sys

TOL = {  # source: (all-gradients relative L2, loss relative, each tensor, each tensor <= 16 values)
    "cpu": (1e-4, 1e-5, 1e-3, 1e-3),
    "cuda_f32": (1e-4, 1e-5, 1e-3, 1e-3),
    "cuda_bf16": (6e-2, 1e-2, 0.15, 0.6),
}
SOURCES = ("cpu", "cuda_f32", "cuda_bf16")


# --------------------------------------------------------------------------- safetensors
# 8-byte little-endian header length N, N bytes of JSON, then the data buffer (offsets relative
# to its start). Parsed by hand so that only torch (no safetensors package) is needed.

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}


def read_safetensors_raw(path):
    """Returns {name: (dtype string, shape list, bytes)} after validating the layout."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short for a safetensors file" % path)
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("%s: header length %d exceeds the file" % (path, n))
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        shape = [int(s) for s in info["shape"]]
        b, e = (int(x) for x in info["data_offsets"])
        if dt not in DTYPE_BYTES:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
        numel = 1
        for s in shape:
            numel *= s
        if e - b != numel * DTYPE_BYTES[dt] or e > len(data) or b < 0:
            raise ValueError("%s: tensor %s: offsets [%d, %d) do not fit shape %s %s"
                             % (path, name, b, e, shape, dt))
        out[name] = (dt, shape, data[b:e])
    return out


def read_safetensors(path):
    """{name: CPU torch tensor in its stored dtype}."""
    import torch
    tdt = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
    out = {}
    for name, (dt, shape, raw) in read_safetensors_raw(path).items():
        if len(raw) == 0:
            out[name] = torch.zeros(shape, dtype=tdt[dt])
        else:
            out[name] = torch.frombuffer(bytearray(raw), dtype=tdt[dt]).reshape(shape).clone()
    return out


# --------------------------------------------------------------------------- dump layout

def model_dirs(root):
    if os.path.isfile(os.path.join(root, "meta.json")):
        return [root]
    dirs = []
    for d in sorted(os.listdir(root)):
        p = os.path.join(root, d)
        if os.path.isfile(os.path.join(p, "meta.json")):
            dirs.append(p)
    return dirs


def load_dump(d, raw_only=False):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    reader = read_safetensors_raw if raw_only else read_safetensors
    weights = reader(os.path.join(d, "weights.safetensors"))
    batch = reader(os.path.join(d, "batch.safetensors"))
    grads = {}
    for src in SOURCES:
        p = os.path.join(d, "grads_%s.safetensors" % src)
        if os.path.isfile(p):
            grads[src] = reader(p)
    # Consistency of the files with meta.json.
    names = [p["name"] for p in meta["params"]]
    for what, tensors in [("weights", weights)] + [("grads_" + s, g) for s, g in grads.items()]:
        if sorted(tensors) != sorted(names):
            missing = sorted(set(names) - set(tensors))
            extra = sorted(set(tensors) - set(names))
            raise ValueError("%s: %s names differ from meta.json (missing %s, extra %s)"
                             % (d, what, missing[:5], extra[:5]))
        for p in meta["params"]:
            t = tensors[p["name"]]
            shape = list(t[1]) if raw_only else list(t.shape)
            if shape != list(p["shape"]):
                raise ValueError("%s: %s %s has shape %s, meta.json says %s"
                                 % (d, what, p["name"], shape, p["shape"]))
    for k in ("tokens", "targets"):
        if k not in batch:
            raise ValueError("%s: batch.safetensors has no '%s'" % (d, k))
    return meta, weights, batch, grads


# --------------------------------------------------------------------------- the model
# Written from the model definition (README / src/model/*.h), shapes: N = B*T rows, C = d_model,
# H heads of D = C / H, F = d_ff, V = vocab.

class Reference:
    def __init__(self, meta, weights, dtype, device):
        import torch
        self.torch = torch
        self.m = meta["model"]
        self.p = {}
        for name, t in weights.items():
            self.p[name] = t.to(device=device, dtype=dtype).clone().requires_grad_(True)
        self.used = set()
        m = self.m
        if m["objective"] != "clm":
            raise NotImplementedError("objective %s (only the causal LM is modelled)" % m["objective"])
        if m["block"] not in ("pre_norm", "post_norm", "parallel", "op"):
            raise NotImplementedError("block %s (shaped attention is not modelled)" % m["block"])
        if m.get("type_vocab_size", 0) or m.get("embed_norm", False):
            raise NotImplementedError("token-type embeddings / embedding norm (BERT)")

    def P(self, name):
        if name not in self.p:
            raise KeyError("the reference needs parameter %s, which the dump does not have" % name)
        self.used.add(name)
        return self.p[name]

    def has(self, name):
        return name in self.p

    # Norms: LayerNorm (x - mu) / sqrt(var + eps) * w + b (biased variance);
    # RMSNorm x / (sqrt(mean x^2) + eps) * w (eps outside the root).
    def norm(self, x, prefix, kind):
        torch = self.torch
        eps = float(self.m["norm_eps"])
        if kind == "none":
            return x
        w = self.P(prefix + ".weight")
        if kind == "layernorm":
            mu = x.mean(dim=-1, keepdim=True)
            var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
            y = (x - mu) / torch.sqrt(var + eps) * w
            if self.has(prefix + ".bias"):
                y = y + self.P(prefix + ".bias")
            return y
        if kind == "rmsnorm":
            rms = torch.sqrt((x * x).mean(dim=-1, keepdim=True))
            return x / (rms + eps) * w
        raise NotImplementedError("norm %s" % kind)

    def linear(self, x, prefix):
        y = x @ self.P(prefix + ".weight").t()
        if self.has(prefix + ".bias"):
            y = y + self.P(prefix + ".bias")
        return y

    def act(self, x):
        F = self.torch.nn.functional
        a = self.m["activation"]
        if a == "relu":
            return F.relu(x)
        if a in ("gelu", "gelu_tanh", "gelu_new"):
            return F.gelu(x, approximate="tanh")
        if a == "gelu_erf":
            return F.gelu(x)
        raise NotImplementedError("activation %s" % a)

    def grouped(self, x, w, b):
        # Per-group linear: x [N, G*I], w [G, O, I], b [G*O] -> [N, G*O];
        # y[n, g*O + o] = sum_i x[n, g*I + i] w[g, o, i] + b[g*O + o].
        G, O, I = w.shape
        N = x.shape[0]
        y = self.torch.einsum("ngi,goi->ngo", x.reshape(N, G, I), w).reshape(N, G * O)
        return y + b

    def attention(self, x, prefix, B, T):
        torch = self.torch
        m = self.m
        C, H = int(m["d_model"]), int(m["n_head"])
        D = C // H
        N = B * T
        qkv = self.linear(x, prefix + ".c_attn")  # [N, 3C]: q | k | v, heads contiguous
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
        q = q.reshape(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.reshape(B, T, H, D).transpose(1, 2)
        v = v.reshape(B, T, H, D).transpose(1, 2)
        if m["qk_norm"]:
            eps = float(m["norm_eps"])

            def rms(t, w):
                return t / (torch.sqrt((t * t).mean(dim=-1, keepdim=True)) + eps) * w
            q = rms(q, self.P(prefix + ".q_norm.weight"))
            k = rms(k, self.P(prefix + ".k_norm.weight"))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [B, H, T, T]
        if m.get("causal", True):
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            s = s.masked_fill(~mask, float("-inf"))
        prob = m["attn_prob"]
        if prob == "softmax1":
            # exp(s_j) / (1 + sum_j exp(s_j)): an extra zero logit that takes no value.
            zero = torch.zeros(B, H, T, 1, dtype=s.dtype, device=s.device)
            p = torch.softmax(torch.cat([s, zero], dim=-1), dim=-1)[..., :T]
        else:
            p = torch.softmax(s, dim=-1)
        if prob == "clipped":
            g, z = float(m["attn_gamma"]), float(m["attn_zeta"])
            p = torch.clamp((z - g) * p + g, 0.0, 1.0)
        elif prob not in ("softmax", "softmax1"):
            raise NotImplementedError("attention probability %s" % prob)
        ctx = (p @ v).transpose(1, 2).reshape(N, C)  # [N, C], heads contiguous
        gate_type = m["attn_gate_type"]
        if gate_type != "none":
            # The gate sees the attention input x (the normed block input in pre-norm blocks).
            if gate_type == "unconditional_per_head":
                logits = self.P(prefix + ".gate.logit").expand(N, H)
            else:
                if m["attn_gate_linear_all_features"]:
                    logits = self.linear(x, prefix + ".gate.all_features")  # [N, H]
                elif m["attn_gate_mlp"]:
                    hid = self.grouped(x, self.P(prefix + ".gate.fc1.weight"),
                                       self.P(prefix + ".gate.fc1.bias"))
                    logits = self.grouped(torch.relu(hid), self.P(prefix + ".gate.fc2.weight"),
                                          self.P(prefix + ".gate.fc2.bias"))
                else:
                    logits = self.grouped(x, self.P(prefix + ".gate.weight"),
                                          self.P(prefix + ".gate.bias"))  # [N, H]
                if gate_type == "conditional_per_head":
                    logits = logits.reshape(B, T, H).mean(dim=1, keepdim=True).expand(B, T, H)
                    logits = logits.reshape(N, H)
                elif gate_type != "conditional_per_token":
                    raise NotImplementedError("gate type %s" % gate_type)
            gate = torch.sigmoid(logits)  # [N, H]
            ctx = (ctx.reshape(N, H, D) * gate.unsqueeze(-1)).reshape(N, C)
        return self.linear(ctx, prefix + ".c_proj")

    def mlp(self, x, prefix):
        return self.linear(self.act(self.linear(x, prefix + ".c_fc")), prefix + ".c_proj")

    def gains(self, pre):
        m = self.m
        if m.get("gains_trainable", False):
            return self.P(pre + "attn_gain"), self.P(pre + "mlp_gain")
        g = float(m["branch_gain"])
        return g, g

    def forward(self, tokens, targets):
        torch = self.torch
        m = self.m
        B, T = tokens.shape
        N = B * T
        wte = self.P("wte.weight")
        x = wte[tokens.reshape(-1)] + self.P("wpe.weight")[:T].repeat(B, 1)  # positions 0..T-1
        block, nk = m["block"], m["norm"]
        for l in range(int(m["n_layer"])):
            pre = "h.%d." % l
            ga, gm = self.gains(pre)
            if block == "pre_norm":
                h = x + ga * self.attention(self.norm(x, pre + "ln_1", nk), pre + "attn", B, T)
                x = h + gm * self.mlp(self.norm(h, pre + "ln_2", nk), pre + "mlp")
            elif block == "post_norm":
                h = self.norm(x + ga * self.attention(x, pre + "attn", B, T), pre + "ln_1", nk)
                x = self.norm(h + gm * self.mlp(h, pre + "mlp"), pre + "ln_2", nk)
            elif block == "parallel":
                u = self.norm(x, pre + "ln_1", nk)
                x = x + ga * self.attention(u, pre + "attn", B, T) + gm * self.mlp(u, pre + "mlp")
            elif block == "op":
                # No norms in front of the branches, except a LayerNorm on layer 0's attention
                # input; the skip connection carries the un-normed x.
                u = self.norm(x, pre + "ln_1", "layernorm") if l == 0 else x
                h = x + ga * self.attention(u, pre + "attn", B, T)
                x = h + gm * self.mlp(h, pre + "mlp")
        if m["final_norm"]:
            x = self.norm(x, "ln_f", "layernorm" if nk == "none" else nk)
        logits = x @ wte.t()  # tied output layer [N, V]
        tg = targets.reshape(-1).long()
        loss = torch.nn.functional.cross_entropy(logits, tg, ignore_index=-1, reduction="mean")
        return loss, int((tg >= 0).sum().item())

    def run(self, tokens, targets):
        loss, counted = self.forward(tokens, targets)
        unused = sorted(set(self.p) - self.used)
        if unused:
            raise RuntimeError("the dump has parameters the reference does not use: %s" % unused[:8])
        loss.backward()
        grads = {}
        for n, t in self.p.items():
            g = t.grad
            grads[n] = (g if g is not None else self.torch.zeros_like(t)).detach().double().cpu()
        return float(loss.item()), counted, grads


# --------------------------------------------------------------------------- comparison

def compare(got, ref, limits=None):
    """(all-gradients relative L2 error, worst tensor error, worst tensor name, tensors over
    limits = (tol, tol for <= 16 values))."""
    norms = {n: float(r.norm()) for n, r in ref.items()}
    rms = math.sqrt(sum(v * v for v in norms.values()) / max(1, len(norms)))
    floor = 1e-3 * rms
    num = den = 0.0
    worst, worst_name = 0.0, ""
    over = []
    for n, r in ref.items():
        g = got[n].double()
        if not bool(g.isfinite().all()):
            return float("inf"), float("inf"), n, [n]
        d = float((g - r).norm())
        num += d * d
        den += norms[n] ** 2
        e = d / max(norms[n], floor) if max(norms[n], floor) > 0 else d
        if e > worst:
            worst, worst_name = e, n
        if limits is not None and e > (limits[1] if r.numel() <= 16 else limits[0]):
            over.append(n)
    total = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    return total, worst, worst_name, over


def check_model(d):
    import torch
    meta, weights, batch, grads = load_dump(d)
    name = meta.get("preset", os.path.basename(d))
    tokens, targets = batch["tokens"].long(), batch["targets"].long()
    ok = True
    ref = Reference(meta, weights, torch.float64, "cpu")
    loss64, counted, g64 = ref.run(tokens, targets)
    if counted != int(meta.get("counted_targets", counted)):
        print("[ref %s] counted targets %d, oft counted %s" % (name, counted, meta["counted_targets"]))
        ok = False
    print("[ref %s] torch f64 loss %.8f over %d targets, %d tensors"
          % (name, loss64, counted, len(g64)))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        r32 = Reference(meta, weights, torch.float32, "cuda")
        loss32, _, g32 = r32.run(tokens.cuda(), targets.cuda())
        total, worst, wn, _ = compare(g32, g64)
        print("[ref %s] torch-cuda-f32 vs torch f64 (calibration): loss %.8f (rel %.2e) | "
              "grads rel err all %.2e, worst %.2e (%s)"
              % (name, loss32, abs(loss32 - loss64) / abs(loss64), total, worst, wn))
    if not grads:
        print("[ref %s] no grads_*.safetensors to compare" % name)
        return False
    for src in SOURCES:
        if src not in grads:
            continue
        tol_g, tol_l, tol_t, tol_s = TOL[src]
        oft_loss = float(meta["losses"][src])
        lrel = abs(oft_loss - loss64) / abs(loss64)
        total, worst, wn, over = compare(grads[src], g64, (tol_t, tol_s))
        passed = lrel <= tol_l and total <= tol_g and not over
        ok = ok and passed
        print("[ref %s %s] %s loss oft %.8f torch %.8f (rel %.2e, tol %.0e) | grads rel err all "
              "%.2e (tol %.0e), worst %.2e (%s, tol %g)%s"
              % (name, src, "ok  " if passed else "FAIL", oft_loss, loss64, lrel, tol_l, total,
                 tol_g, worst, wn, tol_s if grads[src][wn].numel() <= 16 else tol_t,
                 "; over tolerance: " + ", ".join(over[:6]) if over else ""))
    return ok


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if len(args) != 1 or any(f not in ("--check-files",) for f in flags):
        print("usage: python3 scripts/torch/reference.py DUMP_DIR [--check-files]", file=sys.stderr)
        return 2
    root = args[0]
    if not os.path.isdir(root):
        print("reference.py: %s is not a directory (write it with OFT_DUMP_DIR=%s oft_cuda_tests "
              "--gtest_filter=TorchDump.*)" % (root, root), file=sys.stderr)
        return 2
    dirs = model_dirs(root)
    if not dirs:
        print("reference.py: no <model>/meta.json under %s" % root, file=sys.stderr)
        return 2
    if "--check-files" in flags:
        for d in dirs:
            try:
                meta, w, b, g = load_dump(d, raw_only=True)
            except (ValueError, KeyError, OSError) as e:
                print("[files %s] FAIL %s" % (os.path.basename(d), e))
                return 2
            print("[files %s] ok: %d tensors, batch %s, grads from %s, losses %s"
                  % (meta.get("preset"), len(w), b["tokens"][1], sorted(g), meta["losses"]))
        return 0
    try:
        import torch
    except ImportError:
        print("reference.py: PyTorch is not installed (python3 -c 'import torch' fails)",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    all_ok = True
    for d in dirs:
        try:
            ok = check_model(d)
        except (ValueError, KeyError, RuntimeError, NotImplementedError, OSError) as e:
            print("[ref %s] FAIL %s: %s" % (os.path.basename(d), type(e).__name__, e))
            ok = False
        all_ok = all_ok and ok
    print("reference: %s" % ("all models agree" if all_ok else "MISMATCH (see FAIL lines)"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
