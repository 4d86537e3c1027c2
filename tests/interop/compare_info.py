#!/usr/bin/env python3
"""compare_info.py - compare ct_info.py's JSON with `sdcompress info --json` output.

USAGE
    compare_info.py CT_INFO.json SDC_INFO.json [--op-types pymil|proto]

Fields compared (see ct_info.py): specification_version; the set of function names; per
function opset, deployment_target (when sdcompress prints it), op_types, op_count (when
printed); weights.count/parameters and compressed.count/parameters.

op_types: by default (--op-types proto) sdcompress' op_types must equal the histogram of the
protobuf as serialized, and - when sdcompress prints inline_constexpr_params - op_types with
that many consts added must equal coremltools' in-memory (pymil) histogram, which is what
fixtures.json and verify.py report. --op-types pymil compares op_types with the pymil histogram
directly. Extra fields on either side
are ignored. No coremltools import. EXIT CODE 0 equal, 1 differences (listed), 2 error.
"""
import argparse
import json
import sys


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return KeyError
        d = d[p]
    return d


def compare_info(ct, sdc, which="pymil"):
    """List of human-readable differences between ct_info facts and sdcompress info JSON."""
    diffs = []

    def cmp(label, want, got):
        if got is KeyError:
            diffs.append(f"{label}: missing in sdcompress info (coremltools: {want!r})")
        elif want != got:
            diffs.append(f"{label}: sdcompress {got!r} != coremltools {want!r}")

    cmp("specification_version", ct["specification_version"], _get(sdc, "specification_version"))
    sfuncs = sdc.get("functions")
    if not isinstance(sfuncs, list):
        diffs.append("functions: missing or not a list in sdcompress info")
        sfuncs = []
    sby = {f.get("name"): f for f in sfuncs if isinstance(f, dict)}
    cby = {f["name"]: f for f in ct["functions"]}
    if set(sby) != set(cby):
        diffs.append(f"function names: sdcompress {sorted(map(str, sby))} != coremltools {sorted(cby)}")
    key = "op_types" if which == "pymil" else "proto_op_types"
    for name in sorted(set(sby) & set(cby)):
        s, cf = sby[name], cby[name]
        cmp(f"functions[{name}].opset", cf["opset"], _get(s, "opset"))
        if "deployment_target" in s and cf.get("deployment_target") is not None:
            cmp(f"functions[{name}].deployment_target", cf["deployment_target"], s["deployment_target"])
        got = _get(s, "op_types")
        if got is KeyError or not isinstance(got, dict):
            diffs.append(f"functions[{name}].op_types: missing in sdcompress info")
            continue
        want = cf[key]
        for t in sorted(set(want) | set(got)):
            if want.get(t, 0) != got.get(t, 0):
                diffs.append(f"functions[{name}].op_types[{t}]: sdcompress {got.get(t, 0)} != "
                             f"coremltools {want.get(t, 0)} ({which} count)")
        if "op_count" in s:
            cmp(f"functions[{name}].op_count", sum(want.values()), s["op_count"])
        inline = s.get("inline_constexpr_params")
        if which == "proto" and isinstance(inline, int):
            # sdcompress' op_types + one const per inline constexpr parameter must give the
            # histogram of coremltools' in-memory (pymil) program, i.e. fixtures.json's op_types
            as_pymil = dict(got)
            as_pymil["const"] = as_pymil.get("const", 0) + inline
            pym = cf["op_types"]
            for t in sorted(set(pym) | set(as_pymil)):
                if pym.get(t, 0) != as_pymil.get(t, 0):
                    diffs.append(f"functions[{name}]: op_types[{t}] + inline_constexpr_params = "
                                 f"{as_pymil.get(t, 0)} != coremltools' pymil count {pym.get(t, 0)}")
    for group in ("weights", "compressed"):
        for field in ("count", "parameters"):
            cmp(f"{group}.{field}", ct[group][field], _get(sdc, group, field))
    return diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ct_info")
    ap.add_argument("sdc_info")
    ap.add_argument("--op-types", choices=("pymil", "proto"), default="proto")
    a = ap.parse_args(argv)
    try:
        with open(a.ct_info) as f:
            ct = json.load(f)
        with open(a.sdc_info) as f:
            sdc = json.load(f)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(ct, list):
        print("error: CT_INFO.json holds several packages; give one", file=sys.stderr)
        return 2
    diffs = compare_info(ct, sdc, a.op_types)
    if diffs:
        print(f"MISMATCH ({len(diffs)}):")
        for d in diffs:
            print(f"  {d}")
        return 1
    print("info agrees with coremltools")
    return 0


if __name__ == "__main__":
    sys.exit(main())
