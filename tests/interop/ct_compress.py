#!/usr/bin/env python3
"""ct_compress.py - make coremltools 9.0's own compressed equivalent of a package.

USAGE
    ct_compress.py BASE.mlpackage OUT.mlpackage RECIPE_JSON
        RECIPE_JSON: [{"fn": "palettize_weights" | "linear_quantize_weights" | "prune_weights",
                       "config": {keyword arguments of the op config class},
                       "kwargs": {extra keyword arguments of the call, e.g. joint_compression}}, ...]

The steps run in order on the model (coremltools.optimize.coreml's public API, global config
only) and the result is saved to OUT. OpenMP is limited to one thread so that scikit-learn's
k-means (coremltools' path for small groups and vectors) is reproducible.

EXIT CODE 0 ok, 2 error.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import sys

import ctcommon as c


def run(argv):
    if len(argv) != 3:
        raise c.Die("usage: ct_compress.py BASE OUT RECIPE_JSON")
    base, out, recipe = argv
    c.import_ct()
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    classes = {
        "palettize_weights": cto.OpPalettizerConfig,
        "linear_quantize_weights": cto.OpLinearQuantizerConfig,
        "prune_weights": cto.OpMagnitudePrunerConfig,
    }
    model = ct.models.MLModel(base, skip_model_load=True)
    for step in json.loads(recipe):
        fn = step["fn"]
        if fn not in classes:
            raise c.Die(f"unknown step {fn}")
        cfg = cto.OptimizationConfig(global_config=classes[fn](**step.get("config", {})))
        model = getattr(cto, fn)(model, cfg, **step.get("kwargs", {}))
    model.save(out)
    print(f"{out}: written")
    return 0


if __name__ == "__main__":
    c.main_wrapper(run)
