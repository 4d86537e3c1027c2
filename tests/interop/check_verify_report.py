#!/usr/bin/env python3
"""check_verify_report.py - assert a verify.py --json report says "identical to the reference".

USAGE
    verify.py OUT --reference REF --json [--calib FILE] | check_verify_report.py [LABEL]
    check_verify_report.py LABEL REPORT.json

Passes when: the report is ok (exit_code 0), every weight row (small consts included) was paired
through its consumer op name and is bit-for-bit equal to the reference (max_abs 0, SNR inf), the
output holds no compressed weight, and - when the report has a calibration section with a
reference program - the output program's model outputs equal the reference program's exactly.
numpy-free, coremltools-free. EXIT CODE 0 pass, 1 fail, 2 unreadable report.
"""
import json
import sys


def check(rep):
    bad = []
    if not rep.get("ok") or rep.get("exit_code") != 0:
        probs = [p["message"] for p in rep.get("problems", []) if p.get("severity") in ("error", "fatal")]
        bad.append(f"verify.py failed (exit {rep.get('exit_code')}): {probs[:5]}")
    rows = rep.get("weights") or []
    if not rows:
        bad.append("no weights in the report")
    for r in rows:
        if r.get("match") != "consumer-op-name":
            bad.append(f"{r.get('name')}: paired by {r.get('match')!r}, not by its consumer op name")
        if r.get("max_abs") != 0 or r.get("snr_db") != "inf":
            bad.append(f"{r.get('name')}: differs from the reference (max_abs {r.get('max_abs')}, "
                       f"snr {r.get('snr_db')})")
        if r.get("compressed"):
            bad.append(f"{r.get('name')}: still compressed ({r.get('kind')})")
    cal = rep.get("calibration")
    if cal is not None:
        ovr = cal.get("output_vs_reference_program")
        if ovr is None:
            bad.append("calibration ran without a reference program comparison "
                       f"(problems: {[p['message'] for p in rep.get('problems', [])][:3]})")
        elif ovr.get("max_abs") != 0:
            bad.append(f"model outputs differ from the reference program: {ovr}")
    return bad, len(rows), cal


def main(argv):
    label = argv[0] if argv else "verify.py report"
    try:
        if len(argv) >= 2:
            with open(argv[1]) as f:
                rep = json.load(f)
        else:
            rep = json.load(sys.stdin)
    except Exception as e:
        print(f"{label}: cannot read the verify.py JSON report: {e}", file=sys.stderr)
        return 2
    bad, n, cal = check(rep)
    if bad:
        print(f"FAIL {label}: {len(bad)} problem(s)")
        for b in bad[:20]:
            print(f"  {b}")
        return 1
    extra = ""
    if cal is not None:
        extra = f"; model outputs on {cal.get('samples')} calibration sample(s) identical to the reference program"
    print(f"ok {label}: {n} weights identical to the reference{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
