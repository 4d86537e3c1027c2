#!/usr/bin/env python3
"""compare_weights.py - assert two ct_weights.py dumps hold bit-identical values.

USAGE
    compare_weights.py A.npz B.npz [--weights-only] [--max-report N]
    compare_weights.py --pairs A1.npz B1.npz A2.npz B2.npz ...
    compare_weights.py --b-decompresses-a RAW.npz DECOMPRESSED.npz

Checks: the same slot key set, and for every slot the same numpy dtype, shape and bytes
(so -0.0 vs 0.0 or two NaN payloads count as different: this is bit identity, not numeric
equality). --weights-only restricts the comparison to slots that are weights (float, >= 10
elements) on either side. --b-decompresses-a: B must be A with its constexpr chains replaced
by consts: every slot A has must be in B bit-identical, every slot A lists as fed by a constexpr
op must be a const slot in B, B has no further slots and no slot fed by a constexpr op.
numpy only; no coremltools import.

Prints "N weights compared, all bit-identical" (N = weight slots; the count of all slots follows
in parentheses) or the mismatches. EXIT CODE 0 identical, 1 mismatch, 2 error.
"""
import argparse
import json
import sys

import numpy as np


def _load(path):
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise SystemExit(f"error: cannot read {path}: {e}")
    with z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data.pop("__meta__"))) if "__meta__" in data else {"slots": {}, "constexpr_slots": {}}
    return data, meta


def _describe(a):
    return f"{a.dtype.str}{list(a.shape)}"


def compare(path_a, path_b, weights_only=False, b_decompresses_a=False):
    """Returns (n_weight_slots, n_slots, list of problem strings, note)."""
    a, ma = _load(path_a)
    b, mb = _load(path_b)
    problems = []
    note = ""
    if b_decompresses_a:
        for k, why in sorted(mb.get("constexpr_slots", {}).items()):
            problems.append(f"B: {k} is still fed by {why['op_type']} {why['producer']}")
        allowed = set(ma.get("constexpr_slots", {}))
        for k in sorted(allowed - set(b)):
            if k not in mb.get("constexpr_slots", {}):
                problems.append(f"A: {k} was fed by a constexpr op; B has no const for it")
        b = {k: v for k, v in b.items() if k not in allowed}
        note = f"; {len(allowed)} constexpr-fed slot(s) of A are plain consts in B"

    def is_weight(k):
        return ma["slots"].get(k, {}).get("weight") or mb["slots"].get(k, {}).get("weight")

    keys_a, keys_b = set(a), set(b)
    if weights_only:
        keys_a = {k for k in keys_a if is_weight(k)}
        keys_b = {k for k in keys_b if is_weight(k)}
    for k in sorted(keys_a - keys_b):
        why = mb.get("constexpr_slots", {}).get(k)
        extra = f" (B: still fed by {why['op_type']} {why['producer']})" if why else ""
        problems.append(f"only in A: {k}{extra}")
    for k in sorted(keys_b - keys_a):
        why = ma.get("constexpr_slots", {}).get(k)
        extra = f" (A: still fed by {why['op_type']} {why['producer']})" if why else ""
        problems.append(f"only in B: {k}{extra}")
    common = sorted(keys_a & keys_b)
    for k in common:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{k}: A {_describe(x)} vs B {_describe(y)}")
            continue
        if x.tobytes() != y.tobytes():
            if x.dtype.kind in "fiub" and x.dtype.itemsize in (1, 2, 4, 8):
                ux = x.reshape(-1).view(f"u{x.dtype.itemsize}")
                uy = y.reshape(-1).view(f"u{y.dtype.itemsize}")
                nbits = int(np.count_nonzero(ux != uy))
                with np.errstate(all="ignore"):
                    diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                mx = float(np.nanmax(diff)) if diff.size and not np.all(np.isnan(diff)) else float("nan")
                problems.append(f"{k}: {_describe(x)}: {nbits} of {x.size} elements differ bitwise "
                                f"(max abs diff {mx:.6g})")
            else:
                problems.append(f"{k}: {_describe(x)} values differ: A={x.reshape(-1)[:4]} B={y.reshape(-1)[:4]}")
    n_weights = sum(1 for k in common if is_weight(k))
    return n_weights, len(common), problems, note


def report(path_a, path_b, weights_only=False, max_report=20, out=sys.stdout, b_decompresses_a=False):
    nw, n, problems, note = compare(path_a, path_b, weights_only, b_decompresses_a)
    if not problems:
        print(f"{nw} weights compared, all bit-identical ({n} const slots in all{note}): {path_a} vs {path_b}",
              file=out)
        return 0
    print(f"MISMATCH {path_a} vs {path_b}: {len(problems)} problem(s) over {n} common slots "
          f"({nw} weights):", file=out)
    for p in problems[:max_report]:
        print(f"  {p}", file=out)
    if len(problems) > max_report:
        print(f"  ... and {len(problems) - max_report} more", file=out)
    return 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", metavar="A.npz B.npz")
    ap.add_argument("--pairs", action="store_true", help="FILES is a list of A B pairs")
    ap.add_argument("--weights-only", action="store_true")
    ap.add_argument("--b-decompresses-a", action="store_true")
    ap.add_argument("--max-report", type=int, default=20)
    a = ap.parse_args(argv)
    if len(a.files) < 2 or len(a.files) % 2 or (len(a.files) > 2 and not a.pairs):
        ap.error("expected A.npz B.npz (or --pairs with several pairs)")
    worst = 0
    for i in range(0, len(a.files), 2):
        worst = max(worst, report(a.files[i], a.files[i + 1], a.weights_only, a.max_report,
                                  b_decompresses_a=a.b_decompresses_a))
    return worst


if __name__ == "__main__":
    sys.exit(main())
