#!/usr/bin/env python3
"""Torch side of scripts/bench_interp.sh: build an SD-1.5-sized UNet, convert it, time torch.

    interp_torch.py make  --dir DIR [--latent 32] [--samples 3] [--target ios18]
        DIR/unet.mlpackage      diffusers UNet2DConditionModel with SD-1.5's architecture
                                (random weights, seed 0), traced and converted by coremltools
                                (mlprogram, fp16 weights) for the given target
        DIR/calib.safetensors   `samples` inputs (sample, timestep, encoder_hidden_states; f32,
                                fp16-exact) with the torch fp32 outputs as `noise_pred`
    interp_torch.py time  --dir DIR --threads T [--repeat 3]
        prints one JSON line: torch fp32 forward seconds per sample (median over samples of the
        best of `repeat` runs, after one warm-up), with torch.set_num_threads(T)

Needs torch (CPU), diffusers, coremltools 9.0, numpy, safetensors. With numpy >= 2.4,
coremltools 9.0's torch frontend needs the one-function shim that
../shared/fixtures/make_fixtures.py documents (aten::Int on a 1-element array); it is applied
here the same way. Nothing here is a test: it only prepares inputs and measures.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

SD15 = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


def quiet():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("coremltools", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")


def patch_coremltools_numpy():
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops as torch_ops

    orig = torch_ops._cast

    def _cast(context, node, dtype, dtype_name):
        x = torch_ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and not isinstance(x.val, dtype):
            v = np.asarray(x.val)
            if v.shape != () and v.size == 1:
                context.add(mb.const(val=dtype(v.reshape(-1)[0]), name=node.name), node.name)
                return
        return orig(context, node, dtype, dtype_name)

    torch_ops._cast = _cast


def model(latent):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=latent, **SD15).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, u):
            super().__init__()
            self.u = u

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.u(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    return Wrapped(unet).eval()


def inputs(latent, n):
    import torch

    g = torch.Generator().manual_seed(1)
    ts = np.linspace(981, 21, n).round()
    out = {"sample": [], "timestep": [], "encoder_hidden_states": []}
    for t in ts:
        out["sample"].append(torch.randn(1, 4, latent, latent, generator=g).half().float())
        out["timestep"].append(torch.tensor([float(t)]))
        out["encoder_hidden_states"].append(torch.randn(1, 77, 768, generator=g).half().float())
    return out


def make(a):
    import torch
    import coremltools as ct
    from safetensors.torch import save_file

    quiet()
    patch_coremltools_numpy()
    os.makedirs(a.dir, exist_ok=True)
    m = model(a.latent)
    x = inputs(a.latent, a.samples)
    with torch.inference_mode():
        ref = [m(x["sample"][i], x["timestep"][i], x["encoder_hidden_states"][i]) for i in range(a.samples)]
    tensors = {k: torch.stack(v).contiguous() for k, v in x.items()}
    tensors["noise_pred"] = torch.stack(ref).contiguous()
    save_file(tensors, os.path.join(a.dir, "calib.safetensors"), metadata={"what": "bench inputs, torch fp32 outputs"})
    t0 = time.time()
    ex = (x["sample"][0], x["timestep"][0], x["encoder_hidden_states"][0])
    traced = torch.jit.trace(m, ex, check_trace=False)
    target = {"ios17": ct.target.iOS17, "ios18": ct.target.iOS18}[a.target]
    mlm = ct.convert(
        traced,
        inputs=[ct.TensorType(name=k, shape=v.shape) for k, v in zip(["sample", "timestep", "encoder_hidden_states"], ex)],
        outputs=[ct.TensorType(name="noise_pred")],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,
    )
    mlm.save(os.path.join(a.dir, "unet.mlpackage"))
    params = sum(p.numel() for p in m.parameters())
    print(json.dumps({"made": a.dir, "params": params, "convert_seconds": round(time.time() - t0, 1)}))


def time_torch(a):
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    meta = load_file(os.path.join(a.dir, "calib.safetensors"))
    latent = meta["sample"].shape[-1]
    m = model(latent)
    n = meta["sample"].shape[0]
    per = []
    with torch.inference_mode():
        m(meta["sample"][0], meta["timestep"][0], meta["encoder_hidden_states"][0])  # warm-up
        for i in range(n):
            best = float("inf")
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                m(meta["sample"][i], meta["timestep"][i], meta["encoder_hidden_states"][i])
                best = min(best, time.perf_counter() - t0)
            per.append(best)
    print(json.dumps({"torch_seconds_per_sample": float(np.median(per)), "threads": a.threads, "torch": torch.__version__}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--dir", required=True)
    m.add_argument("--latent", type=int, default=32)
    m.add_argument("--samples", type=int, default=3)
    m.add_argument("--target", choices=["ios17", "ios18"], default="ios18")
    t = sub.add_parser("time")
    t.add_argument("--dir", required=True)
    t.add_argument("--threads", type=int, required=True)
    t.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    {"make": make, "time": time_torch}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
