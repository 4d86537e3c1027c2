#!/usr/bin/env python3
"""ct_palettized.py - what coremltools 9.0 sees in a (palettized) package, weight by weight.

USAGE
    ct_palettized.py --jobs JOBS.json --out FACTS.json
        JOBS.json: [{"id": ID, "package": P, "base": B or null}, ...]

For every job, the package is loaded the way the other interop scripts do it (coremltools'
Model_pb2 + milproto frontend, which rebuilds every op through the MIL builder: op types, opset
availability, input types and shapes are checked). A package that does not load is recorded as
{"error": "..."}; the script still exits 0 so that the caller can name the case.

Then every weight (ctcommon's definition: float, >= 10 elements, output of a const or constexpr
op, read by an ordinary op) is decoded to a dense array by coremltools' own decompression: for a
constexpr op, ``op.materialized_val_inference()``, which is exactly what
``coremltools.optimize.coreml.decompress_weights`` (its WeightDecompressor pass) calls for each
constexpr op, without the seconds-long re-serialisation of the whole model. For a chain of
constexpr ops (a scaled LUT feeding constexpr_lut_to_dense, say) that pass itself is applied to a
second copy of the program in memory, and the weight is read from the const it leaves.

With a base package, every weight of the base is paired with the package's weight through its
slots ("<function>/<consumer op name>/<input name>/<index>", ctcommon.slot_key), and compared
in float64: sse = sum((y-x)^2), sig = sum(x^2), snr_db = 10 log10(sig/sse) (null when sse is 0),
rel_l2, max_abs.

OUTPUT (FACTS.json): {ID: {
    "package", "spec_version", "opsets" {function: opset}, "weight_bin_bytes" (all files under
    weights/), "summary" (ctcommon.weights_summary: weights / compressed counts),
    "constexpr_slots": sorted slot keys fed by a constexpr op,
    "luts": {producer var name: {"op_type", "lut_shape", "lut_entries", "lut_groups",
             "indices_dtype"}} for every constexpr_lut_to_dense,
    "weights": {base const name: {"slots", "shape", "numel", "compressed", "op_type",
               "producer", "lut_entries", "lut_groups", "sse", "sig", "snr_db", "rel_l2",
               "max_abs"}}          (only with a base)
    "problems": [...]                (pairing problems; empty when all is well)
} or {"error": "..."}}

EXIT CODE 0 (facts written), 2 (bad arguments or unreadable jobs file).
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

import ctcommon as c


def _weights_bytes(weights_dir):
    total = 0
    for root, _dirs, files in os.walk(weights_dir):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def _lut_facts(op):
    lut = op.inputs.get("lut")
    idx = op.inputs.get("indices")
    shape = [int(d) for d in lut.shape] if lut is not None and lut.shape is not None else None
    if shape is None:
        entries, groups = None, None
    elif "shape" in op.inputs:  # iOS16 form: rank-1 LUT, one per tensor
        entries, groups = shape[0], 1
    else:  # iOS18 form: [groups per axis..., palette size, vector size]
        entries = shape[-2]
        groups = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return {
        "op_type": op.op_type,
        "lut_shape": shape,
        "lut_entries": entries,
        "lut_groups": groups,
        "indices_dtype": c.dtype_str(idx) if idx is not None else None,
    }


class Dense:
    """Dense values of const / constexpr outputs, materialised once per op."""

    def __init__(self, loaded=None):
        self.cache = {}
        self.loaded = loaded
        self.decompressed = None

    def _chained(self, var):
        """var's value from a copy of the program after coremltools' WeightDecompressor."""
        if self.decompressed is None:
            from coremltools.optimize.coreml._quantization_passes import WeightDecompressor

            prog = c.load_program(self.loaded.spec, self.loaded.weights_dir)
            WeightDecompressor(op_selector=lambda op: True).apply(prog)
            consts = {}
            for fname, func in prog.functions.items():
                for op in c.iter_ops(func):
                    if op.op_type == "const":
                        consts[op.outputs[0].name] = op.outputs[0]
            self.decompressed = consts
        if var.name not in self.decompressed:
            raise c.Die(f"{var.name}: not a const after coremltools' WeightDecompressor")
        return np.asarray(self.decompressed[var.name].val)

    def value(self, var):
        op = var.op
        if op.op_type == "const":
            return np.asarray(var.val)
        key = id(op)
        if key not in self.cache:
            for v in op.inputs.values():
                vs = list(v) if isinstance(v, (list, tuple)) else [v]
                for iv in vs:
                    if iv is not None and iv.op is not None and iv.op.op_type.startswith("constexpr_"):
                        if self.loaded is None:
                            raise c.Die(f"{op.name}: chained constexpr ops need the package")
                        return self._chained(var)
            vals = op.materialized_val_inference()
            if not isinstance(vals, (list, tuple)):
                vals = [vals]
            self.cache[key] = [np.asarray(x) for x in vals]
        return self.cache[key][list(op.outputs).index(var)]


def _weight_slots(prog):
    """{(function, id(var)): (var, [slot keys])} for every weight var, in program order."""
    out = {}
    for fname, op, pname, j, var in c.iter_slots(prog):
        if var.op is None or not c.is_constish(var.op.op_type):
            continue
        if c.dtype_str(var) not in c.FLOAT_DTYPES or c.numel(var) < c.MIN_WEIGHT_ELEMS:
            continue
        k = (fname, id(var))
        if k not in out:
            out[k] = (var, [])
        out[k][1].append(c.slot_key(fname, op, pname, j))
    return out


def facts(package, base, base_cache):
    L = c.Loaded(package)
    spec = L.spec
    res = {
        "package": str(package),
        "spec_version": int(spec.specificationVersion),
        "opsets": {n: f.opset for n, f in spec.mlProgram.functions.items()},
        "weight_bin_bytes": _weights_bytes(L.weights_dir),
        "summary": c.weights_summary(L.prog),
        "problems": [],
    }
    luts = {}
    constexpr_slots = []
    for fname, op, pname, j, var in c.iter_slots(L.prog):
        if var.op is not None and var.op.op_type.startswith("constexpr_"):
            constexpr_slots.append(c.slot_key(fname, op, pname, j))
    for fname, func in L.prog.functions.items():
        for op in c.iter_ops(func):
            if op.op_type == "constexpr_lut_to_dense":
                luts[op.outputs[0].name] = _lut_facts(op)
    res["constexpr_slots"] = sorted(constexpr_slots)
    res["luts"] = luts
    if base is None:
        return res

    if base not in base_cache:
        B = c.Loaded(base)
        base_cache[base] = (B, _weight_slots(B.prog), Dense())
    B, base_weights, base_dense = base_cache[base]
    dense = Dense(L)
    by_slot = {}
    for (_f, _i), (var, slots) in _weight_slots(L.prog).items():
        for s in slots:
            by_slot[s] = var
    used = set()
    weights = {}
    for (_f, _i), (bvar, slots) in base_weights.items():
        name = bvar.op.name
        outs = {id(by_slot[s]): by_slot[s] for s in slots if s in by_slot}
        missing = [s for s in slots if s not in by_slot]
        if missing or len(outs) != 1:
            res["problems"].append(f"{name}: slots {slots} map to {len(outs)} weight(s) of the package"
                                   f" (missing: {missing})")
            continue
        ovar = next(iter(outs.values()))
        used.add(id(ovar))
        x = base_dense.value(bvar).astype(np.float64)
        y = dense.value(ovar)
        if tuple(y.shape) != tuple(x.shape):
            res["problems"].append(f"{name}: shape {list(y.shape)} vs base {list(x.shape)}")
            continue
        y = y.astype(np.float64)
        d = y - x
        sse = float(np.sum(d * d))
        sig = float(np.sum(x * x))
        op_type = ovar.op.op_type
        lf = luts.get(ovar.name) if op_type == "constexpr_lut_to_dense" else None
        if name in weights:
            res["problems"].append(f"{name}: two base weights with this const name")
        weights[name] = {
            "slots": slots,
            "shape": [int(s) for s in x.shape],
            "numel": int(x.size),
            "compressed": op_type != "const",
            "op_type": op_type,
            "producer": ovar.op.name,
            "out_dtype": c.dtype_str(ovar),
            "base_dtype": c.dtype_str(bvar),
            "lut_entries": lf["lut_entries"] if lf else None,
            "lut_groups": lf["lut_groups"] if lf else None,
            "sse": sse,
            "sig": sig,
            "snr_db": (10.0 * math.log10(sig / sse)) if sse > 0 and sig > 0 else None,
            "rel_l2": math.sqrt(sse / sig) if sig > 0 else math.sqrt(sse),
            "max_abs": float(np.max(np.abs(d))) if d.size else 0.0,
        }
    for (_f, _i), (var, slots) in _weight_slots(L.prog).items():
        if id(var) not in used:
            res["problems"].append(f"{var.name}: weight of the package with no base weight (slots {slots})")
    res["weights"] = weights
    return res


def run(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        jobs = json.loads(Path(a.jobs).read_text())
    except Exception as e:
        raise c.Die(f"{a.jobs}: {e}")
    c.import_ct()
    base_cache = {}
    out = {}
    for j in jobs:
        try:
            out[j["id"]] = facts(j["package"], j.get("base"), base_cache)
        except c.Die as e:
            out[j["id"]] = {"error": str(e)}
        except Exception as e:  # a coremltools failure is a finding, not a crash of the harness
            out[j["id"]] = {"error": f"{type(e).__name__}: {e}"}
        r = out[j["id"]]
        if "error" in r:
            print(f"{j['id']}: coremltools: {r['error']}")
        else:
            s = r["summary"]
            print(f"{j['id']}: coremltools loads it (spec {r['spec_version']}, "
                  f"{s['compressed']['count']} of {s['weights']['count']} weights compressed)")
    Path(a.out).write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    c.main_wrapper(run)
