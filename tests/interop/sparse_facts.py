#!/usr/bin/env python3
"""sparse_facts.py - per-weight error and zero pattern of decoded packages against a base.

USAGE
    sparse_facts.py BASE.npz OUT.json X1.npz [X2.npz ...]

All inputs come from ct_weights.py (X with --decompress, i.e. coremltools' own
decompress_weights, or a package that sdcompress decompressed). For every weight slot of BASE
("<function>/<consumer op>/<input>/<index>") that is a weight (float, rank >= 2, more than
2048 elements) and for every X, in float64 against the base x:

    sig = sum(x^2), sse = sum((y-x)^2), snr_db = 10 log10(sig/sse) (null when sse = 0),
    zeros = count(y == 0), base_zeros = count(x == 0), numel,
    zeros_smallest = every zero of y is at most as large in |x| as every non-zero of y
                     (the zeros are the smallest weights).

OUT.json: {"<X path>": {"<slot>": {...}}}. numpy only, no coremltools import.
EXIT CODE 0, 2 on bad input.
"""
import json
import math
import sys

import numpy as np


def load(path):
    z = np.load(path, allow_pickle=False)
    with z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data.pop("__meta__")))
    return data, meta


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, _ = load(argv[0])
    out = {}
    for path in argv[2:]:
        xs, _ = load(path)
        facts = {}
        for key, x in base.items():
            if x.dtype.kind != "f" or x.ndim < 2 or x.size <= 2048:
                continue
            if key not in xs:
                facts[key] = {"missing": True}
                continue
            y = xs[key]
            if y.shape != x.shape:
                facts[key] = {"shape": list(y.shape), "base_shape": list(x.shape)}
                continue
            xf = x.astype(np.float64)
            yf = y.astype(np.float64)
            d = yf - xf
            sig = float(np.sum(xf * xf))
            sse = float(np.sum(d * d))
            zero = yf == 0
            mags = np.abs(xf)
            smallest = True
            if zero.any() and (~zero).any():
                smallest = bool(mags[zero].max() <= mags[~zero].min())
            f, op, param, idx = key.split("/")
            facts[key] = {
                "function": f,
                "op": op,
                "param": param,
                "shape": list(x.shape),
                "numel": int(x.size),
                "sig": sig,
                "sse": sse,
                "snr_db": 10 * math.log10(sig / sse) if sse > 0 and sig > 0 else None,
                "zeros": int(zero.sum()),
                "base_zeros": int((xf == 0).sum()),
                "zeros_smallest": smallest,
            }
        out[path] = facts
    with open(argv[1], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
