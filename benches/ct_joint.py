#!/usr/bin/env python3
"""ct_joint.py - time coremltools' joint prune + palettize on one .mlpackage (for scripts/bench_joint.sh).

USAGE
    ct_joint.py MODEL.mlpackage -o OUT.mlpackage [--sparsity 0.4] [--nbits 4] [--group-size 16]
        [--weight-threshold 2048]

Runs, in one process, what a coremltools 9.0 user runs for the SDXL tutorial's joint recipe:

    m = ct.models.MLModel(MODEL, skip_model_load=True)                       # "load"
    p = cto.prune_weights(m, cto.OptimizationConfig(                          # "prune"
            global_config=cto.OpMagnitudePrunerConfig(target_sparsity=..., weight_threshold=...)))
    c = cto.palettize_weights(p, cto.OptimizationConfig(                      # "palettize"
            global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=...,
                granularity="per_grouped_channel" (or per_tensor without --group-size),
                group_size=..., weight_threshold=...)), joint_compression=True)
    c.save(OUT)                                                               # "save"

and prints one JSON object on stdout: {"tool": "coremltools", "version", "config", "import",
"load", "prune", "palettize", "save", "total" (load..save), each {"wall_s", "cpu_s"},
"peak_rss_bytes", "weight_bin_bytes", "constexpr_ops" (histogram in OUT)}. OUT is kept (the
caller measures its error). On failure prints {"error": ...} and exits 1.
"""
import argparse
import io
import json
import logging
import os
import resource
import shutil
import sys
import time
import warnings
from collections import Counter

os.environ.setdefault("TQDM_DISABLE", "1")


def now():
    t = os.times()
    return time.perf_counter(), t.user + t.system


def phase(t0, c0):
    t = os.times()
    return {"wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(t.user + t.system - c0, 4)}


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


def constexpr_hist(ct, out):
    prog = ct.utils.load_spec(out).mlProgram
    hist = Counter()
    for fn in prog.functions.values():
        for block in fn.block_specializations.values():
            stack = [block]
            while stack:
                b = stack.pop()
                for op in b.operations:
                    stack.extend(op.blocks)
                    if op.type.startswith("constexpr_"):
                        hist[op.type] += 1
    return dict(hist)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--nbits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--weight-threshold", type=int, default=2048)
    a = ap.parse_args()
    res = {"tool": "coremltools", "model": a.model, "output": a.output}
    try:
        t0, c0 = now()
        warnings.filterwarnings("ignore")
        saved = sys.stderr
        sys.stderr = io.StringIO()
        try:
            import coremltools as ct
            import coremltools.optimize.coreml as cto
        finally:
            sys.stderr = saved
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        res["version"] = ct.__version__
        res["import"] = phase(t0, c0)
        pal = {"mode": "kmeans", "nbits": a.nbits, "weight_threshold": a.weight_threshold}
        if a.group_size is not None:
            pal["granularity"] = "per_grouped_channel"
            pal["group_size"] = a.group_size
        prune = {"target_sparsity": a.sparsity, "weight_threshold": a.weight_threshold}
        res["config"] = {"OpMagnitudePrunerConfig": prune, "OpPalettizerConfig": pal,
                         "joint_compression": True}
        if os.path.exists(a.output):
            shutil.rmtree(a.output)
        T0, C0 = now()
        t0, c0 = now()
        model = ct.models.MLModel(a.model, skip_model_load=True)
        res["load"] = phase(t0, c0)
        t0, c0 = now()
        pruned = cto.prune_weights(
            model, cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(**prune)))
        res["prune"] = phase(t0, c0)
        t0, c0 = now()
        joint = cto.palettize_weights(
            pruned, cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(**pal)),
            joint_compression=True)
        res["palettize"] = phase(t0, c0)
        t0, c0 = now()
        joint.save(a.output)
        res["save"] = phase(t0, c0)
        res["total"] = phase(T0, C0)
        res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        res["weight_bin_bytes"] = dir_bytes(os.path.join(a.output, "Data", "com.apple.CoreML", "weights"))
        res["constexpr_ops"] = constexpr_hist(ct, a.output)
    except Exception as e:  # noqa: BLE001 - reported to the caller as JSON
        res["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(res))
        return 1
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
