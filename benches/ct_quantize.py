#!/usr/bin/env python3
"""ct_quantize.py - coremltools 9.0 linear_quantize_weights on one package (scripts/bench_quantize.sh).

    ct_quantize.py MODEL.mlpackage OUT.mlpackage [--dtype int8] [--granularity per_channel]

Loads the package (skip_model_load), runs linear_quantize_weights with OpLinearQuantizerConfig
(mode linear_symmetric, the given dtype and granularity, weight_threshold 2048) and saves it:
what a coremltools user runs. Prints {"load_s", "quantize_s", "save_s"} (wall seconds) as JSON.
"""
import json
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--granularity", default="per_channel")
    a = ap.parse_args()
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    t0 = time.perf_counter()
    m = ct.models.MLModel(a.model, skip_model_load=True)
    t1 = time.perf_counter()
    cfg = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype=a.dtype, granularity=a.granularity
        )
    )
    q = cto.linear_quantize_weights(m, cfg)
    t2 = time.perf_counter()
    q.save(a.out)
    t3 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": t3 - t2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
