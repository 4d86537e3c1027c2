#!/usr/bin/env python3
"""Synthetic UNet calibration inputs for the tiny SD fixtures (numpy only).

Writes N samples shaped like fixtures/calib-tiny-sd.safetensors (sample
[N,1,4,16,16], timestep [N,1], encoder_hidden_states [N,1,77,48]): a noised
"clean latent" (smooth 4x4 structure upsampled bilinearly plus detail, unit
std) at a random timestep of SD's scaled-linear schedule, and Gaussian text
states with a larger first (BOS-like) token. Values are fp16-exact because
the models' inputs are fp16. Used as SparseGPT calibration data in
tests/sparsegpt_prune.rs, which evaluates on the fixture's own 8 samples
(drawn the same way, never seen by the pruning).

    python scripts/make_calib.py 32 1 fixtures/calib-tiny-sd-32.safetensors
"""
import sys

import numpy as np
from safetensors.numpy import save_file


def upsample4to16(c):
    # Bilinear with half-pixel centres, edges clamped.
    src = (np.arange(16) + 0.5) / 4 - 0.5
    lo = np.floor(src)
    f = np.where(src < 0, 0.0, src - lo)
    i0 = np.clip(lo.astype(int), 0, 3)
    i1 = np.clip(i0 + 1, 0, 3)
    r = c[..., i0, :] * (1 - f)[:, None] + c[..., i1, :] * f[:, None]
    return r[..., :, i0] * (1 - f) + r[..., :, i1] * f


def main():
    n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(seed)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alphas = np.cumprod(1 - betas)
    xs, ts, es = [], [], []
    for _ in range(n):
        t = int(rng.integers(1, 1000))
        x0 = upsample4to16(rng.standard_normal((1, 4, 4, 4)))
        x0 = x0 + 0.35 * rng.standard_normal((1, 4, 16, 16))
        x0 /= x0.std()
        a = alphas[t]
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal((1, 4, 16, 16))
        e = rng.standard_normal((1, 77, 48))
        e[:, 0] *= 3.0
        xs.append(xt.astype(np.float16).astype(np.float32))
        ts.append(np.array([t], np.float32))
        es.append(e.astype(np.float16).astype(np.float32))
    save_file(
        {
            "sample": np.stack(xs),
            "timestep": np.stack(ts),
            "encoder_hidden_states": np.stack(es),
        },
        out,
    )


if __name__ == "__main__":
    main()
