#!/usr/bin/env python3
"""ct_info.py - coremltools-derived facts about a package, for checking `sdcompress info --json`.

USAGE
    ct_info.py PACKAGE [PACKAGE ...]                 # JSON (one object, or a list for several)
    ct_info.py PACKAGE --compare SDC_INFO.json       # also compare with sdcompress' info JSON
    ct_info.py --check PKG1 SDC1.json PKG2 SDC2.json ...   # several comparisons, one process
    ct_info.py --fixtures fixtures/fixtures.json   # self-check: every fixture vs its recorded facts
    options: --op-types proto|pymil   which histogram --compare checks (default proto; see
                                      compare_info.py)

FIELDS (schema "sdcompress.ct_info/1")
    specification_version   Model.specificationVersion
    functions[]             name, opset, deployment_target (opset -> iOS name), op_types, op_count
        op_types            op type -> count in the function's block, recursing into nested
                            blocks (the fixtures have none), counted on coremltools' pymil program
                            as loaded by its milproto frontend. This is what fixtures.json and
                            verify.py report. NOTE: pymil turns every iOS16 constexpr *attribute*
                            and every inline value binding (iOS18 constexpr inputs) into a
                            separate `const` op, so for compressed programs it counts more consts
                            than the protobuf holds (e.g. iOS16 lut_to_dense: +3 per weight).
        proto_op_types      the same histogram counted on the protobuf as serialized.
    weights                 {count, parameters}: verify.py's weights - float tensors with >= 10
                            elements that are a const or constexpr-chain output read by at least
                            one ordinary (non-const, non-constexpr) op; each tensor counted once.
    compressed              the same, restricted to weights produced by a constexpr op.

--compare checks specification_version, the set of function names, and per function opset,
deployment_target (if sdcompress prints it), op_types against proto_op_types (plus, when
sdcompress prints inline_constexpr_params, op_types + that many consts against the pymil
op_types; --op-types pymil compares with the pymil histogram directly), op_count (if printed;
must be the sum), and weights/compressed count and parameters.
EXIT CODE 0 ok / all equal, 1 a difference, 2 error.
"""
import argparse
import json
import sys

import ctcommon as c
from compare_info import compare_info


def info(package):
    L = c.Loaded(package)
    py, pb = c.op_histograms(L.prog, L.spec)
    funcs = []
    for fname, func in L.spec.mlProgram.functions.items():
        funcs.append({
            "name": fname,
            "opset": func.opset,
            "deployment_target": c.OPSET_TARGET.get(func.opset),
            "op_types": py.get(fname, {}),
            "op_count": sum(py.get(fname, {}).values()),
            "proto_op_types": pb.get(fname, {}),
            "proto_op_count": sum(pb.get(fname, {}).values()),
        })
    ws = c.weights_summary(L.prog)
    return {
        "schema": "sdcompress.ct_info/1",
        "package": str(package),
        "specification_version": L.spec.specificationVersion,
        "functions": funcs,
        "weights": ws["weights"],
        "compressed": ws["compressed"],
        "nested_blocks_recursed": True,
    }


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:
        raise c.Die(f"cannot read JSON {path}: {e}")


def _check(package, sdc_path, which):
    ct_facts = info(package)
    diffs = compare_info(ct_facts, _read_json(sdc_path), which)
    if diffs:
        print(f"MISMATCH {package}: sdcompress info ({sdc_path}) vs coremltools:")
        for d in diffs:
            print(f"  {d}")
        return 1
    f = ct_facts["functions"]
    print(f"{package}: info agrees with coremltools ({len(f)} function(s), "
          f"{sum(x['proto_op_count'] for x in f)} ops ({sum(x['op_count'] for x in f)} in pymil), "
          f"{ct_facts['weights']['count']} weights, "
          f"{ct_facts['compressed']['count']} compressed)")
    return 0


def check_fixtures(fixtures_json):
    """Self-check of this script: its facts for every package listed in fixtures.json must equal
    what the fixture generator recorded there (coremltools 9.0 + verify.py at generation time)."""
    import os

    fx = _read_json(fixtures_json)
    root = os.path.dirname(os.path.abspath(fixtures_json))
    bad = n = 0
    for f in fx.get("fixtures", []):
        if not f["file"].endswith(".mlpackage"):
            continue
        pkg = os.path.join(root, f["file"])
        if not os.path.isdir(pkg):
            print(f"{f['file']}: listed in fixtures.json but missing")
            bad += 1
            continue
        n += 1
        got = info(pkg)
        hist = {}
        for fn in got["functions"]:
            for t, k in fn["op_types"].items():
                hist[t] = hist.get(t, 0) + k
        pairs = [
            ("specificationVersion", f.get("specificationVersion"), got["specification_version"]),
            ("opset", f.get("opset"), {fn["name"]: fn["opset"] for fn in got["functions"]}),
            ("op_types", f.get("op_types"), hist),
            ("weight_tensors", f.get("weight_tensors"), got["weights"]["count"]),
            ("weight_params", f.get("weight_params"), got["weights"]["parameters"]),
            ("compressed_tensors", f.get("compressed_tensors"), got["compressed"]["count"]),
            ("compressed_params", f.get("compressed_params"), got["compressed"]["parameters"]),
        ]
        diffs = [f"{k}: fixtures.json {w!r} != ct_info {g!r}" for k, w, g in pairs if w is not None and w != g]
        if diffs:
            bad += 1
            print(f"MISMATCH {f['file']}:")
            for d in diffs:
                print(f"  {d}")
    print(f"{n} fixtures checked against {fixtures_json}: " + ("all agree" if not bad else f"{bad} differ"))
    return 1 if bad or not n else 0


def run(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*")
    ap.add_argument("--compare", metavar="SDC_INFO.json")
    ap.add_argument("--check", action="store_true", help="arguments are PACKAGE SDC_INFO.json pairs")
    ap.add_argument("--op-types", choices=("pymil", "proto"), default="proto")
    ap.add_argument("--fixtures", metavar="FIXTURES.json", help="self-check against fixtures.json")
    a = ap.parse_args(argv)
    if a.fixtures:
        return check_fixtures(a.fixtures)
    if not a.packages:
        ap.error("no package")
    if a.check:
        if len(a.packages) % 2:
            ap.error("--check expects PACKAGE SDC_INFO.json pairs")
        worst = 0
        for i in range(0, len(a.packages), 2):
            worst = max(worst, _check(a.packages[i], a.packages[i + 1], a.op_types))
        return worst
    if a.compare:
        if len(a.packages) != 1:
            ap.error("--compare takes one package")
        return _check(a.packages[0], a.compare, a.op_types)
    res = [info(p) for p in a.packages]
    json.dump(res[0] if len(res) == 1 else res, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    c.main_wrapper(run)
