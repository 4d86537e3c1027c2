#!/usr/bin/env python3
"""Python side of scripts/bench_sparsegpt.sh (a benchmark, not a test).

  gen DIR          write DIR/conv.safetensors (W [1280,1280,3,3], X [16,1280,16,16]) and
                   DIR/linear.safetensors (W [1280,1280], X [4,1024,1280]): seeded, with
                   realistic activations (low-rank mixed smooth fields, per-channel scales,
                   a few outlier channels, SiLU).
  ct LAYER H OURS  coremltools 9.0's torch SparseGPT (layerwise_compression.algorithms.SparseGPT,
                   weight_dtype=float32, target_sparsity 0.5, the defaults otherwise) on the layer:
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


def cmd_ct(layer, hfile, ours_file):
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
    cfg = ModuleSparseGPTConfig(target_sparsity=0.5, weight_dtype="float32")
    xt = torch.from_numpy(X)
    res = {"layer": layer, "torch": torch.__version__, "threads": torch.get_num_threads()}

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


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        cmd_gen(sys.argv[2])
    elif sys.argv[1] == "ct":
        cmd_ct(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
