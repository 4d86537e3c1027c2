#!/usr/bin/env python3
"""proto_equal.py - assert two Core ML model protobufs are equal, as coremltools parses them.

USAGE
    proto_equal.py A B [--weights-bytes]
        A, B: model.mlmodel files or .mlpackage folders (the root model is found via Manifest.json)
    proto_equal.py --pairs A1 B1 A2 B2 ...
    proto_equal.py --decompressed A B      # B must be "A with its constexpr ops turned into consts"

Both files are parsed with coremltools' own ``coremltools.proto.Model_pb2`` and compared as
messages (protobuf compares map fields regardless of entry order, so two serializations that
differ only in map-entry order are equal). On a mismatch the first differing field path is
printed, e.g. ``mlProgram.functions["main"].block_specializations["CoreML7"].operations[12]
.attributes["val"].blobFileValue.offset: 128 != 192``.

Also checked, on both sides: no unknown fields anywhere in the message tree (a field that
coremltools' schema does not know would be silently carried by the parser).

--weights-bytes (packages only): every file under the two weights/ folders (next to
model.mlmodel) must exist on both sides with byte-identical content; the first differing
offset is reported.

--decompressed: instead of equality, checks the contract of `sdcompress decompress` on the
protobuf: everything outside the ML program (description, spec version, metadata) equal;
per function the same inputs, opset and block outputs; B has no constexpr_* op; B's ordinary
ops are exactly A's, in the same order, message for message (so their input bindings are
unchanged); every const op of A is in B unchanged except for where its blob sits in
weight.bin (BlobFileValue.offset may change; the file name may not); every other const of B replaces a constexpr
output of A: its output has that exact name and declared type, its `name` attribute equals the
output name, its value has that type; and every constexpr output of A that an ordinary op or a
block output reads is provided by such a const. Values are not decoded here (ct_weights.py
does that).

EXIT CODE 0 equal, 1 different, 2 error.
"""
import argparse
import sys
from pathlib import Path

import ctcommon as c


def _unknown_count(msg):
    try:
        from google.protobuf import unknown_fields

        return len(unknown_fields.UnknownFieldSet(msg))
    except ImportError:  # older protobuf
        return len(msg.UnknownFields())


def unknown_fields(msg, path="", out=None):
    """Paths of every message in the tree that carries unknown fields."""
    out = [] if out is None else out
    n = _unknown_count(msg)
    if n:
        out.append(f"{path or '<root>'} ({n} unknown field(s))")
    for fd, val in msg.ListFields():
        if fd.message_type is None:
            continue
        name = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.message_type is not None:
                for k in val:
                    unknown_fields(val[k], f"{name}[{k!r}]", out)
        elif _is_repeated(fd):
            for i, m in enumerate(val):
                unknown_fields(m, f"{name}[{i}]", out)
        else:
            unknown_fields(val, name, out)
    return out


def _is_repeated(fd):
    try:
        return fd.is_repeated
    except AttributeError:
        return fd.label == fd.LABEL_REPEATED


def _short(v):
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def first_difference(a, b, path=""):
    """Path and description of the first difference between two messages of one type, or None."""
    fields = {fd.number: fd for fd, _ in a.ListFields()}
    fields.update({fd.number: fd for fd, _ in b.ListFields()})
    for num in sorted(fields):
        fd = fields[num]
        name = f"{path}.{fd.name}" if path else fd.name
        va, vb = getattr(a, fd.name), getattr(b, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            ka, kb = set(va.keys()), set(vb.keys())
            if ka != kb:
                return f"{name}: keys only in A {sorted(ka - kb)!r}, only in B {sorted(kb - ka)!r}"
            is_msg = fd.message_type.fields_by_name["value"].message_type is not None
            for k in sorted(ka):
                if is_msg:
                    d = first_difference(va[k], vb[k], f"{name}[{k!r}]")
                    if d:
                        return d
                elif va[k] != vb[k]:
                    return f"{name}[{k!r}]: {_short(va[k])} != {_short(vb[k])}"
        elif _is_repeated(fd):
            if len(va) != len(vb):
                return f"{name}: {len(va)} elements != {len(vb)}"
            for i, (x, y) in enumerate(zip(va, vb)):
                if fd.message_type is not None:
                    d = first_difference(x, y, f"{name}[{i}]")
                    if d:
                        return d
                elif x != y:
                    return f"{name}[{i}]: {_short(x)} != {_short(y)}"
        elif fd.message_type is not None:
            ha, hb = a.HasField(fd.name), b.HasField(fd.name)
            if ha != hb:
                return f"{name}: set in {'A' if ha else 'B'} only"
            d = first_difference(va, vb, name)
            if d:
                return d
        elif va != vb:
            return f"{name}: {_short(va)} != {_short(vb)}"
    if a != b:
        return f"{path or '<root>'}: messages differ (unknown fields or presence)"
    return None


def _weights_dir(p):
    return c.model_file(p).parent / "weights"


def compare_weight_files(pa, pb):
    problems = []
    da, db = _weights_dir(pa), _weights_dir(pb)
    fa = sorted(str(p.relative_to(da)) for p in da.rglob("*") if p.is_file()) if da.is_dir() else []
    fb = sorted(str(p.relative_to(db)) for p in db.rglob("*") if p.is_file()) if db.is_dir() else []
    if fa != fb:
        problems.append(f"weights/ files differ: A {fa} vs B {fb}")
    for rel in sorted(set(fa) & set(fb)):
        x, y = (da / rel).read_bytes(), (db / rel).read_bytes()
        if x != y:
            n = min(len(x), len(y))
            off = next((i for i in range(n) if x[i] != y[i]), n)
            problems.append(f"weights/{rel}: {len(x)} vs {len(y)} bytes, first difference at offset {off}")
    return problems, len(fa)


def check(pa, pb, weights_bytes=False):
    sa, sb = c.read_spec(pa), c.read_spec(pb)
    problems = []
    for label, s in (("A", sa), ("B", sb)):
        for u in unknown_fields(s):
            problems.append(f"{label} has unknown fields at {u}")
    if sa != sb:
        problems.append("protobuf differs: " + (first_difference(sa, sb) or "(no field path found)"))
    nfiles = 0
    if weights_bytes:
        p, nfiles = compare_weight_files(pa, pb)
        problems += p
    if problems:
        print(f"DIFFERENT {pa} vs {pb}:")
        for p in problems:
            print(f"  {p}")
        return 1
    extra = f", {nfiles} weight file(s) byte-identical" if weights_bytes else ""
    print(f"protobuf equal, no unknown fields{extra}: {pa} vs {pb}")
    return 0


def _const_name(op):
    v = op.attributes.get("name")
    if v is None:
        return None
    vals = v.immediateValue.tensor.strings.values
    return vals[0] if len(vals) else None


def _bound_names(op):
    names = set()
    for arg in op.inputs.values():
        for b in arg.arguments:
            if b.WhichOneof("binding") == "name":
                names.add(b.name)
    return names


def decompressed_problems(sa, sb):
    """Problems with B as the decompressed form of A (see --decompressed)."""
    import copy

    problems = []
    ra, rb = copy.deepcopy(sa), copy.deepcopy(sb)
    ra.ClearField("mlProgram")
    rb.ClearField("mlProgram")
    if ra != rb:
        problems.append("outside the ML program: " + (first_difference(ra, rb) or "differs"))
    pa, pb = sa.mlProgram, sb.mlProgram
    if pa.version != pb.version:
        problems.append(f"mlProgram.version: {pa.version} != {pb.version}")
    if pa.attributes != pb.attributes:
        problems.append("mlProgram.attributes differ")
    if set(pa.functions) != set(pb.functions):
        problems.append(f"function names: {sorted(pa.functions)} != {sorted(pb.functions)}")
    for fname in sorted(set(pa.functions) & set(pb.functions)):
        fa, fb = pa.functions[fname], pb.functions[fname]
        where = f"functions[{fname!r}]"
        if fa.opset != fb.opset:
            problems.append(f"{where}.opset: {fa.opset} != {fb.opset}")
        if list(fa.inputs) != list(fb.inputs):
            problems.append(f"{where}.inputs differ")
        if fa.attributes != fb.attributes:
            problems.append(f"{where}.attributes differ")
        if set(fa.block_specializations) != set(fb.block_specializations):
            problems.append(f"{where}.block_specializations keys differ")
            continue
        for bname in sorted(fa.block_specializations):
            ba, bb = fa.block_specializations[bname], fb.block_specializations[bname]
            bw = f"{where}.block_specializations[{bname!r}]"
            if list(ba.outputs) != list(bb.outputs) or list(ba.inputs) != list(bb.inputs) or ba.attributes != bb.attributes:
                problems.append(f"{bw}: block inputs/outputs/attributes differ")
            problems += _block_problems(ba, bb, bw)
    return problems


def _without_blob_offsets(op):
    """Copy of a const op with every BlobFileValue offset zeroed: a decompressor rewrites
    weight.bin, so where a blob sits may change; its value is checked by ct_weights.py."""
    op2 = type(op)()
    op2.CopyFrom(op)
    for v in op2.attributes.values():
        if v.WhichOneof("value") == "blobFileValue":
            v.blobFileValue.offset = 0
    return op2


def _block_problems(ba, bb, bw):
    problems = []
    c_ops = [op for op in bb.operations if op.type.startswith("constexpr_")]
    for op in c_ops[:5]:
        problems.append(f"{bw}: B still has {op.type} {op.outputs[0].name if op.outputs else '?'}")
    if len(c_ops) > 5:
        problems.append(f"{bw}: ... {len(c_ops)} constexpr ops in B in all")
    ord_a = [op for op in ba.operations if not c.is_constish(op.type)]
    ord_b = [op for op in bb.operations if not c.is_constish(op.type)]
    if len(ord_a) != len(ord_b):
        problems.append(f"{bw}: {len(ord_a)} ordinary ops in A, {len(ord_b)} in B")
    for i, (x, y) in enumerate(zip(ord_a, ord_b)):
        if x != y:
            problems.append(f"{bw}: ordinary op #{i} ({x.type} {_const_name(x)}) differs: "
                            + (first_difference(x, y, "op") or "?"))
            break
    consts_a = {op.outputs[0].name: op for op in ba.operations if op.type == "const" and op.outputs}
    consts_b = {op.outputs[0].name: op for op in bb.operations if op.type == "const" and op.outputs}
    cx_out = {}
    for op in ba.operations:
        if op.type.startswith("constexpr_"):
            for o in op.outputs:
                cx_out[o.name] = o
    for name, op in consts_a.items():
        other = consts_b.get(name)
        if other is None:
            problems.append(f"{bw}: const {name} of A is missing in B")
            continue
        x, y = _without_blob_offsets(op), _without_blob_offsets(other)
        if x != y:
            problems.append(f"{bw}: const {name} changed: " + (first_difference(x, y, "op") or "?"))
    for name, op in consts_b.items():
        if name in consts_a:
            continue
        decl = cx_out.get(name)
        if decl is None:
            problems.append(f"{bw}: B has a new const {name} that is no constexpr output of A")
            continue
        if len(op.outputs) != 1 or op.outputs[0] != decl:
            problems.append(f"{bw}: const {name}: output type differs from A's constexpr output: "
                            + (first_difference(decl, op.outputs[0], "output") or "?"))
        if _const_name(op) != name:
            problems.append(f"{bw}: const {name}: name attribute {_const_name(op)!r} != output name")
        val = op.attributes.get("val")
        if val is None:
            problems.append(f"{bw}: const {name}: no 'val' attribute")
        elif val.type != decl.type:
            problems.append(f"{bw}: const {name}: value type differs from the declared output type: "
                            + (first_difference(decl.type, val.type, "type") or "?"))
    read = set(ba.outputs)
    for op in ord_a:
        read |= _bound_names(op)
    for name in sorted(set(cx_out) & read):
        if name not in consts_b:
            problems.append(f"{bw}: constexpr output {name} (read by an ordinary op) has no const in B")
    return problems


def check_decompressed(pa, pb):
    sa, sb = c.read_spec(pa), c.read_spec(pb)
    problems = []
    for label, s in (("A", sa), ("B", sb)):
        for u in unknown_fields(s):
            problems.append(f"{label} has unknown fields at {u}")
    problems += decompressed_problems(sa, sb)
    if problems:
        print(f"NOT A FAITHFUL DECOMPRESSION {pa} -> {pb}: {len(problems)} problem(s)")
        for p in problems[:30]:
            print(f"  {p}")
        if len(problems) > 30:
            print(f"  ... and {len(problems) - 30} more")
        return 1
    n_new = 0
    for fname, f in sb.mlProgram.functions.items():
        for bname, blk in f.block_specializations.items():
            names_a = {op.outputs[0].name for op in sa.mlProgram.functions[fname].block_specializations[bname].operations
                       if op.type == "const" and op.outputs}
            n_new += sum(1 for op in blk.operations if op.type == "const" and op.outputs[0].name not in names_a)
    print(f"decompressed structure ok ({n_new} constexpr outputs now consts, ordinary ops unchanged): {pa} -> {pb}")
    return 0


def run(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="A B")
    ap.add_argument("--pairs", action="store_true")
    ap.add_argument("--weights-bytes", action="store_true")
    ap.add_argument("--decompressed", action="store_true",
                    help="B must be A with constexpr ops replaced by consts (not equality)")
    a = ap.parse_args(argv)
    if len(a.paths) % 2 or (len(a.paths) > 2 and not a.pairs):
        ap.error("expected A B (or --pairs A1 B1 A2 B2 ...)")
    for p in a.paths:
        if not Path(p).exists():
            raise c.Die(f"{p}: does not exist")
    worst = 0
    for i in range(0, len(a.paths), 2):
        if a.decompressed:
            worst = max(worst, check_decompressed(a.paths[i], a.paths[i + 1]))
        else:
            worst = max(worst, check(a.paths[i], a.paths[i + 1], a.weights_bytes))
    return worst


if __name__ == "__main__":
    c.main_wrapper(run)
