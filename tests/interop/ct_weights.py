#!/usr/bin/env python3
"""ct_weights.py - dump every const value that an ordinary op reads, as coremltools sees it.

USAGE
    ct_weights.py PACKAGE OUT.npz [--decompress] [--save-decompressed DIR]
    ct_weights.py [--decompress] PKG1 OUT1.npz PKG2 OUT2.npz ...   # several, one coremltools import
    ct_weights.py --jobs JOBS.json     # [{"package": P, "out": O, "decompress": bool,
                                       #   "save_decompressed": DIR (optional)}, ...]

The package is read with coremltools 9.0 only: model.mlmodel through coremltools' Model_pb2,
the program through its milproto frontend (pymil), blobs through its BlobReader. With
--decompress, the package first goes through ``coremltools.optimize.coreml.decompress_weights``
(which turns every constexpr chain into a const), and the result is read the same way;
--save-decompressed also writes that coremltools package to DIR.

OUTPUT (.npz, no pickles)
    one array per *slot*: key "<function>/<consumer op name>/<input name>/<index>", value = the
    dense const value with its exact dtype (fp16 stays float16; int32, bool, str as they are).
    Every input of every ordinary (non-const, non-constexpr) op that is the output of a ``const``
    op is a slot; that includes small immediates (axes, shapes, flags, strings), not only weights.
    Consumer op names are kept by both ``sdcompress decompress`` and coremltools'
    ``decompress_weights``, so their outputs for the same input get the same key set.
    An input fed by a constexpr op is *not* a slot (it is listed in the metadata as
    "constexpr_slots"): a correct decompressor leaves none, so a leftover constexpr shows up as a
    missing key when two dumps are compared.
    "__meta__": a JSON string: package, decompressed, per-slot {mil_dtype, shape, producer,
    weight} (weight = verify.py's definition: float, >= 10 elements), constexpr_slots.

EXIT CODE  0 ok, 2 error (package missing, unreadable, coremltools fails).
"""
import argparse
import json
import sys

import numpy as np

import ctcommon as c


def dump(package, out, decompress=False, save_decompressed=None):
    L = c.Loaded(package, decompress=decompress, save_to=save_decompressed)
    arrays = {}
    meta_slots = {}
    constexpr_slots = {}
    for fname, op, pname, j, var in c.iter_slots(L.prog):
        producer = var.op
        if producer is None:
            continue  # function input
        key = c.slot_key(fname, op, pname, j)
        if producer.op_type.startswith("constexpr_"):
            constexpr_slots[key] = {"producer": producer.name, "op_type": producer.op_type}
            continue
        if producer.op_type != "const":
            continue
        if key in arrays:
            raise c.Die(f"{package}: duplicate slot key {key!r} (two ops named {op.name!r} in {fname}?)")
        val = c.exact_value(var)
        if val is None:
            raise c.Die(f"{package}: const {var.name} has no value")
        arrays[key] = val
        dt = c.dtype_str(var)
        meta_slots[key] = {
            "mil_dtype": dt,
            "shape": list(val.shape),
            "producer": var.name,
            "weight": dt in c.FLOAT_DTYPES and val.size >= c.MIN_WEIGHT_ELEMS,
        }
    meta = {
        "schema": "sdcompress.ct_weights/1",
        "package": str(package),
        "decompressed": bool(decompress),
        "slots": meta_slots,
        "constexpr_slots": constexpr_slots,
    }
    arrays["__meta__"] = np.asarray(json.dumps(meta, sort_keys=True))
    np.savez(out, **arrays)
    n_w = sum(1 for m in meta_slots.values() if m["weight"])
    return len(meta_slots), n_w, len(constexpr_slots)


def run(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="*", metavar="PACKAGE OUT.npz")
    ap.add_argument("--decompress", action="store_true",
                    help="run coremltools.optimize.coreml.decompress_weights first")
    ap.add_argument("--save-decompressed", metavar="DIR",
                    help="with --decompress and one package: save coremltools' decompressed package")
    ap.add_argument("--jobs", metavar="JOBS.json", help="JSON list of {package, out, decompress}")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    jobs = []
    if a.jobs:
        with open(a.jobs) as f:
            for j in json.load(f):
                jobs.append((j["package"], j["out"], bool(j.get("decompress", False)), j.get("save_decompressed")))
    if len(a.pairs) % 2:
        ap.error("expected PACKAGE OUT.npz pairs")
    for i in range(0, len(a.pairs), 2):
        jobs.append((a.pairs[i], a.pairs[i + 1], a.decompress, None))
    if not jobs:
        ap.error("nothing to do")
    if a.save_decompressed:
        if len(jobs) != 1 or not jobs[0][2]:
            ap.error("--save-decompressed needs exactly one package and --decompress")
        jobs[0] = jobs[0][:3] + (a.save_decompressed,)
    for pkg, out, dec, save in jobs:
        n, nw, nce = dump(pkg, out, dec, save)
        if not a.quiet:
            extra = f", {nce} slot(s) still fed by constexpr ops" if nce else ""
            print(f"{pkg}{' (coremltools decompress_weights)' if dec else ''}: "
                  f"{n} const slots ({nw} weight slots){extra} -> {out}")
    return 0


if __name__ == "__main__":
    c.main_wrapper(run)
