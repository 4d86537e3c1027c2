#!/usr/bin/env python3
"""ct_palettize.py - time coremltools' palettize_weights on one .mlpackage (for scripts/bench_palettize.sh).

USAGE
    ct_palettize.py MODEL.mlpackage -o OUT.mlpackage [--mode kmeans] [--nbits 4]
        [--granularity per_tensor|per_grouped_channel] [--group-size 16]
        [--weight-threshold 2048] [--per-channel-scale] [--keep-output]
    ct_palettize.py --load-check MODEL.mlpackage

Runs, in one process, exactly what a coremltools 9.0 user runs:

    m = ct.models.MLModel(MODEL, skip_model_load=True)              # "load"
    c = cto.palettize_weights(m, cto.OptimizationConfig(             # "palettize": milproto ->
            global_config=cto.OpPalettizerConfig(mode=..., nbits=...,  #  pymil, the pass, pymil ->
                granularity=..., group_size=..., weight_threshold=...)))  # protobuf + weight.bin
    c.save(OUT)                                                       # "save" (copies the package)

and prints one JSON object on stdout:

    {"tool": "coremltools", "version", "numpy", "sklearn", "model", "output", "config",
     "import": {...}, "load": {...}, "palettize": {...}, "save": {...},
     "total": {...},            load + palettize + save (import excluded)
     "peak_rss_bytes",          ru_maxrss of this process after save (before the counting below)
     "weight_bin_bytes",        size of OUT's weights/ directory
     "compressed", "compressed_parameters"  (constexpr_lut_to_dense ops in OUT's program and
                                the elements of their outputs),
     "constexpr_ops"}           histogram of constexpr_* op types in OUT
each phase as {"wall_s", "cpu_s"} (cpu = user + system of this process, os.times()).

With --load-check, nothing is compressed: MODEL (e.g. an sdcompress output) is loaded the way
palettize_weights starts, through coremltools' milproto frontend into a pymil program (every op
is rebuilt and type-checked by the MIL builder), and the JSON holds "loaded" (true), "load"
({"wall_s", "cpu_s"}), "ops" (histogram of the program's op types, nested blocks included).

The output package is removed afterwards unless --keep-output is given (the counting reads
only its model.mlmodel). On failure prints {"error": "..."} and exits 1. Progress bars and the
Linux "Failed to load _MLModelProxy" noise are silenced.
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


def phase(t0, c0):
    t = os.times()
    return {"wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(t.user + t.system - c0, 4)}


def now():
    t = os.times()
    return time.perf_counter(), t.user + t.system


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def count_luts(ct, out):
    """constexpr_lut_to_dense ops (and their output sizes) in OUT's program, all functions."""
    spec = ct.utils.load_spec(out)
    prog = spec.mlProgram
    hist = Counter()
    n, params = 0, 0
    for fn in prog.functions.values():
        for block in fn.block_specializations.values():
            stack = [block]
            while stack:
                b = stack.pop()
                for op in b.operations:
                    for sub in op.blocks:
                        stack.append(sub)
                    if not op.type.startswith("constexpr_"):
                        continue
                    hist[op.type] += 1
                    if op.type != "constexpr_lut_to_dense":
                        continue
                    n += 1
                    dims = [d.constant.size for d in op.outputs[0].type.tensorType.dimensions]
                    k = 1
                    for d in dims:
                        k *= d
                    params += k
    return n, params, dict(hist)


def load_check(ct, res, model_path):
    """MODEL through coremltools' milproto frontend, as palettize_weights does first."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils as mu

    t0, c0 = now()
    model = ct.models.MLModel(model_path, skip_model_load=True)
    spec_version = model.get_spec().specificationVersion
    prog = mu._convert_model_spec_to_pymil_prog(model, spec_version, milproto.load)
    res["load"] = phase(t0, c0)
    ops = Counter()
    for fn in prog.functions.values():
        stack = [fn]
        while stack:
            b = stack.pop()
            for op in b.operations:
                ops[op.op_type] += 1
                stack.extend(op.blocks)
    res["loaded"] = True
    res["specification_version"] = spec_version
    res["ops"] = dict(sorted(ops.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("-o", "--output")
    ap.add_argument("--load-check", action="store_true",
                    help="only load MODEL through the milproto frontend (no compression)")
    ap.add_argument("--mode", default="kmeans", choices=["kmeans", "uniform", "unique"])
    ap.add_argument("--nbits", type=int, default=4)
    ap.add_argument("--granularity", default="per_tensor",
                    choices=["per_tensor", "per_grouped_channel"])
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--weight-threshold", type=int, default=2048)
    ap.add_argument("--keep-output", action="store_true")
    ap.add_argument("--per-channel-scale", action="store_true",
                    help="enable_per_channel_scale=True (what `sdcompress palettize --per-channel-scale` matches)")
    a = ap.parse_args()
    if not a.load_check and not a.output:
        ap.error("-o/--output is required (unless --load-check)")

    res = {"tool": "coremltools", "model": a.model, "output": a.output}
    try:
        t0, c0 = now()
        warnings.filterwarnings("ignore")
        saved = sys.stderr
        sys.stderr = io.StringIO()
        try:
            import coremltools as ct
            import coremltools.optimize.coreml as cto
            import numpy
        finally:
            sys.stderr = saved
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        try:
            import sklearn
            res["sklearn"] = sklearn.__version__
        except ImportError:
            res["sklearn"] = None
        res["version"] = ct.__version__
        res["numpy"] = numpy.__version__
        res["import"] = phase(t0, c0)
        if a.load_check:
            load_check(ct, res, a.model)
            print(json.dumps(res))
            return 0

        kw = {"mode": a.mode, "nbits": a.nbits, "granularity": a.granularity,
              "weight_threshold": a.weight_threshold}
        if a.granularity == "per_grouped_channel" and a.group_size is not None:
            kw["group_size"] = a.group_size
        if a.per_channel_scale:
            kw["enable_per_channel_scale"] = True
        res["config"] = {"global_config": {"OpPalettizerConfig": kw}}
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(**kw))

        if os.path.exists(a.output):
            shutil.rmtree(a.output)
        T0, C0 = now()
        t0, c0 = now()
        model = ct.models.MLModel(a.model, skip_model_load=True)
        res["load"] = phase(t0, c0)
        t0, c0 = now()
        compressed = cto.palettize_weights(model, config)
        res["palettize"] = phase(t0, c0)
        t0, c0 = now()
        compressed.save(a.output)
        res["save"] = phase(t0, c0)
        res["total"] = phase(T0, C0)
        res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        del compressed, model

        wdir = os.path.join(a.output, "Data", "com.apple.CoreML", "weights")
        res["weight_bin_bytes"] = dir_bytes(wdir)
        n, params, hist = count_luts(ct, a.output)
        res["compressed"] = n
        res["compressed_parameters"] = params
        res["constexpr_ops"] = hist
        if not a.keep_output:
            shutil.rmtree(a.output, ignore_errors=True)
    except Exception as e:  # noqa: BLE001 - reported to the caller as JSON
        res["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(res))
        return 1
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
