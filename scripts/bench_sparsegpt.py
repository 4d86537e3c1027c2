#!/usr/bin/env python3
"""Python side of scripts/bench_sparsegpt.sh (a benchmark, not a test).

  gen DIR          write DIR/conv.safetensors (W [1280,1280,3,3], X [16,1280,16,16]) and
                   DIR/linear.safetensors (W [1280,1280], X [4,1024,1280]): seeded, with
                   realistic activations (low-rank mixed smooth fields, per-channel scales,
                   a few outlier channels, SiLU).
  ct LAYER H OURS [DTYPE]
                   coremltools 9.0's torch SparseGPT (layerwise_compression.algorithms.SparseGPT,
                   weight_dtype=DTYPE (default float32: pure pruning; coremltools' own default is
                   uint8 = joint 8-bit quantization), target_sparsity 0.5, defaults otherwise):
                   times add_batch on X (its own float32 H) and _compress_impl on OUR Hessian H
                   (cast to float32 as coremltools keeps it), then scores both results on H in
                   float64: the loss of spec §9 and the relative reconstruction error. Prints JSON.
"""

import json
import logging
import math
import sys
import time

import numpy as np


def save(path, tensors):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)


def load(path):
    from safetensors.numpy import load_file
    return load_file(path)


def activations(rng, n, ch, h, w, rank=96):
    """Smooth low-rank fields mixed into `ch` channels, scaled, with outliers, through SiLU."""
    coarse = rng.standard_normal((n, rank, max(1, h // 4), max(1, w // 4)))
    fields = np.kron(coarse, np.ones((1, 1, 4, 4)))[:, :, :h, :w]
    fields += 0.3 * rng.standard_normal(fields.shape)
    mix = rng.standard_normal((ch, rank)) / math.sqrt(rank)
    x = np.einsum("cr,nrhw->nchw", mix, fields) + 0.2 * rng.standard_normal((n, ch, h, w))
    scale = np.exp(0.5 * rng.standard_normal(ch))
    scale[rng.choice(ch, 8, replace=False)] *= 10.0
    x = x * scale[None, :, None, None]
    return (x / (1.0 + np.exp(-x))).astype(np.float32)


def cmd_gen(d):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((1280, 1280, 3, 3)) / math.sqrt(11520)).astype(np.float32)
    x = activations(rng, 16, 1280, 16, 16)
    save(f"{d}/conv.safetensors", {"W": w, "X": x})
    wl = (rng.standard_normal((1280, 1280)) / math.sqrt(1280)).astype(np.float32)
    xl = activations(rng, 4, 1280, 32, 32)                    # 4 samples x 1024 tokens
    xl = xl.reshape(4, 1280, 1024).transpose(0, 2, 1).copy()  # [b, t, in]
    save(f"{d}/linear.safetensors", {"W": wl, "X": xl})
    print(f"wrote {d}/conv.safetensors and {d}/linear.safetensors")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.msgs = []

    def emit(self, record):
        self.msgs.append(record.getMessage())


def score(W, Wp, H, damp):
    """(loss §9 = 1/2 tr(dW Hd dW^T), rel error tr(dW H dW^T)/tr(W H W^T)) in float64."""
    import torch
    Wt = torch.from_numpy(W.astype(np.float64))
    D = Wt - torch.from_numpy(Wp.astype(np.float64))
    num = float(((D @ H) * D).sum())
    den = float(((Wt @ H) * Wt).sum())
    loss = 0.5 * (num + damp * float((D * D).sum()))
    return loss, num / den


def cmd_ct(layer, hfile, ours_file, dtype="float32"):
    import torch
    import torch.nn as nn
    from coremltools.optimize.torch.layerwise_compression.algorithms import (
        ModuleSparseGPTConfig, SparseGPT)

    t = load(layer)
    W, X = t["W"], t["X"]
    H = torch.from_numpy(load(hfile)["H"])                      # float64, from sdcompress
    ours = load(ours_file)["W"]
    conv = W.ndim == 4
    if conv:
        m = nn.Conv2d(W.shape[1], W.shape[0], W.shape[2:], padding=1, bias=False)
    else:
        m = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(W))
    cfg = ModuleSparseGPTConfig(target_sparsity=0.5, weight_dtype=dtype)
    xt = torch.from_numpy(X)
    res = {"layer": layer, "weight_dtype": dtype, "torch": torch.__version__,
           "threads": torch.get_num_threads()}

    # 1. Hessian accumulation from X (coremltools' own, float32).
    alg = SparseGPT(m, cfg)
    with torch.no_grad():
        t0 = time.perf_counter()
        alg.add_batch(xt, None)
        res["ct_hessian_seconds"] = time.perf_counter() - t0
        hct = alg._hessian.double()
        res["ct_vs_our_hessian_max_rel"] = float((hct - H).abs().max() / H.abs().max())

    # 2. Pruning on our Hessian (cast to float32, coremltools' precision).
    alg._hessian = H.float()
    alg._nsamples = X.shape[0]
    with torch.no_grad():
        alg._inp1 = xt[:1]
        alg._out1 = m(xt[:1])
    cap = Capture()
    lg = logging.getLogger("coremltools.optimize.torch.layerwise_compression.algorithms")
    lg.addHandler(cap)
    lg.setLevel(logging.INFO)
    with torch.no_grad():
        t0 = time.perf_counter()
        alg._compress_impl()
        res["ct_prune_seconds"] = time.perf_counter() - t0
    res["ct_log"] = cap.msgs
    Wct = m.weight.detach().numpy().reshape(W.shape[0], -1)
    Wf = W.reshape(W.shape[0], -1)
    Wo = ours.reshape(W.shape[0], -1)
    damp = 0.01 * float(torch.diagonal(H).mean())
    res["ct_loss"], res["ct_rel_error"] = score(Wf, Wct, H, damp)
    res["our_loss"], res["our_rel_error"] = score(Wf, Wo, H, damp)
    res["ct_sparsity"] = float(np.mean(Wct == 0))
    res["our_sparsity"] = float(np.mean(Wo == 0))
    res["mask_agreement"] = float(np.mean((Wct == 0) == (Wo == 0)))
    print(json.dumps(res, indent=2))


def time_v(path):
    """Wall seconds, CPU seconds and peak RSS (MB) from a /usr/bin/time -v log."""
    out = {}
    for line in open(path):
        k, _, v = line.strip().partition(": ")
        if k == "Elapsed (wall clock) time (h:mm:ss or m:ss)":
            parts = [float(p) for p in v.split(":")]
            out["wall"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        elif k in ("User time (seconds)", "System time (seconds)"):
            out["cpu"] = out.get("cpu", 0.0) + float(v)
        elif k == "Maximum resident set size (kbytes)":
            out["rss_mb"] = int(v) / 1024
    return out


def cmd_summary(d):
    """One table from the runs of bench_sparsegpt.sh in directory d."""
    rows = []
    for layer in ("conv", "linear"):
        ours = json.load(open(f"{d}/ours-{layer}.json"))
        ct = json.load(open(f"{d}/ct-{layer}.json"))
        to, tc = time_v(f"{d}/ours-{layer}.time"), time_v(f"{d}/ct-{layer}.time")
        rows.append({
            "layer": layer, "shape": ours["shape"],
            "ours_hessian_s": ours["hessian_seconds"], "ours_prune_s": ours["prune_seconds"],
            "ours_wall_s": to["wall"], "ours_cpu_s": to["cpu"], "ours_rss_mb": to["rss_mb"],
            "ct_hessian_s": ct["ct_hessian_seconds"], "ct_prune_s": ct["ct_prune_seconds"],
            "ct_wall_s": tc["wall"], "ct_cpu_s": tc["cpu"], "ct_rss_mb": tc["rss_mb"],
            "prune_speedup": ct["ct_prune_seconds"] / ours["prune_seconds"],
            "hessian_speedup": ct["ct_hessian_seconds"] / ours["hessian_seconds"],
            "total_speedup": (ct["ct_hessian_seconds"] + ct["ct_prune_seconds"])
            / (ours["hessian_seconds"] + ours["prune_seconds"]),
            "ours_loss": ct["our_loss"], "ct_loss": ct["ct_loss"],
            "ours_rel_error": ct["our_rel_error"], "ct_rel_error": ct["ct_rel_error"],
            "mask_agreement": ct["mask_agreement"],
            "ours_sparsity": ct["our_sparsity"], "ct_sparsity": ct["ct_sparsity"],
        })
    print(json.dumps(rows, indent=2))
    print()
    print("| layer | sdcompress Hessian / prune (s) | coremltools Hessian / prune (s) | prune speed-up "
          "| total speed-up | loss §9 ours / CT | rel. error ours / CT | mask agreement "
          "| peak RSS ours / CT (MB) | CPU s ours / CT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} {tuple(r['shape'])} | {r['ours_hessian_s']:.2f} / {r['ours_prune_s']:.2f} "
              f"| {r['ct_hessian_s']:.2f} / {r['ct_prune_s']:.2f} | {r['prune_speedup']:.1f}x "
              f"| {r['total_speedup']:.1f}x | {r['ours_loss']:.6g} / {r['ct_loss']:.6g} "
              f"| {r['ours_rel_error']:.5e} / {r['ct_rel_error']:.5e} | {r['mask_agreement']:.4f} "
              f"| {r['ours_rss_mb']:.0f} / {r['ct_rss_mb']:.0f} | {r['ours_cpu_s']:.1f} / {r['ct_cpu_s']:.1f} |")


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        cmd_gen(sys.argv[2])
    elif sys.argv[1] == "ct":
        cmd_ct(*sys.argv[2:])
    elif sys.argv[1] == "summary":
        cmd_summary(sys.argv[2])
    else:
        sys.exit(__doc__)
