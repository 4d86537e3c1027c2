"""Shared helpers for the coremltools interop scripts (numpy + coremltools only).

Everything here reads a package the way coremltools 9.0 does: the protobuf through
coremltools' own ``Model_pb2`` and the program through its milproto frontend (pymil), which
reads weight.bin through coremltools' BlobReader. Nothing in this module knows sdcompress.

Conventions shared by the scripts:

* A *slot* is one use of a value by an ordinary op: the key is
  ``"<function>/<consumer op name>/<input name>/<index>"`` (index = position inside a tuple
  input, 0 for a plain input). Consumer op names are the ``name`` attribute of the op, which
  both ``sdcompress decompress`` and coremltools' ``decompress_weights`` leave unchanged.
* "Ordinary" op = any op whose type is neither ``const`` nor ``constexpr_*``.
* A *weight* (verify.py's definition): a float (fp16/fp32/bf16) tensor that is the output of a
  ``const`` op or of a constexpr chain, read by at least one ordinary op, with >= 10 elements.
"""

import io
import json
import logging
import os
import sys
import warnings
from collections import Counter, OrderedDict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' pass pipeline draws progress bars

_ct = None


def import_ct():
    """Imports coremltools without its Linux proxy-loading noise; returns the module."""
    global _ct
    if _ct is not None:
        return _ct
    warnings.filterwarnings("ignore")
    saved = sys.stderr
    sys.stderr = io.StringIO()
    try:
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto import load as _unused  # noqa: F401
    finally:
        sys.stderr = saved
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    _ct = ct
    return ct


class Die(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


MIN_WEIGHT_ELEMS = 10
FLOAT_DTYPES = ("fp16", "fp32", "bf16", "fp64")

# opset name -> deployment target coremltools associates with it
OPSET_TARGET = {
    "CoreML5": "iOS15",
    "CoreML6": "iOS16",
    "CoreML7": "iOS17",
    "CoreML8": "iOS18",
    "CoreML9": "iOS26",
}


def is_constish(op_type):
    return op_type == "const" or op_type.startswith("constexpr_")


def model_file(package):
    """Path of the root model.mlmodel of a package, found through Manifest.json."""
    pkg = Path(package)
    if pkg.is_file() and pkg.suffix == ".mlmodel":
        return pkg
    man = pkg / "Manifest.json"
    if not man.is_file():
        raise Die(f"{pkg}: not an .mlpackage (no Manifest.json)")
    m = json.loads(man.read_text())
    try:
        rel = m["itemInfoEntries"][m["rootModelIdentifier"]]["path"]
    except KeyError as e:
        raise Die(f"{man}: no root model entry ({e})")
    p = pkg / "Data" / rel
    if not p.is_file():
        raise Die(f"{pkg}: root model file {p} missing")
    return p


def read_spec(path):
    """Parses a model.mlmodel (or the root model of a package) with coremltools' Model_pb2."""
    import_ct()
    from coremltools.proto import Model_pb2

    p = model_file(path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(p.read_bytes())
    except Exception as e:
        raise Die(f"{p}: does not parse as CoreML.Specification.Model: {e}")
    return spec


def load_program(spec, weights_dir):
    """pymil Program through coremltools' milproto frontend."""
    import_ct()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    if spec.WhichOneof("Type") != "mlProgram":
        raise Die(f"model type is {spec.WhichOneof('Type')!r}, not mlProgram")
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))


class Loaded:
    """A package as coremltools sees it: spec, weights dir, pymil program."""

    def __init__(self, package, decompress=False, save_to=None):
        ct = import_ct()
        self.package = str(package)
        self.decompressed = decompress
        if decompress:
            model_file(package)  # clear error for a non-package
            try:
                m = ct.models.MLModel(str(package), skip_model_load=True)
                from coremltools.optimize.coreml import decompress_weights

                m = decompress_weights(m)
            except Exception as e:
                raise Die(f"{package}: coremltools decompress_weights failed: {type(e).__name__}: {e}")
            if save_to:
                m.save(str(save_to))
            self._keep = m  # its temporary package must outlive our reads
            self.spec = m.get_spec()
            self.weights_dir = Path(m.weights_dir)
        else:
            self.spec = read_spec(package)
            self.weights_dir = model_file(package).parent / "weights"
        try:
            self.prog = load_program(self.spec, self.weights_dir)
        except Die:
            raise
        except Exception as e:
            raise Die(f"{package}: coremltools cannot load the program: {type(e).__name__}: {e}")


def iter_ops(block):
    """Ops of a block in program order, recursing into nested blocks (none in our fixtures)."""
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from iter_ops(b)


def dtype_str(var):
    from coremltools.converters.mil.mil import types

    try:
        return types.builtin_to_string(var.dtype)
    except Exception:
        return str(var.dtype)


def var_shape(var):
    try:
        return tuple(int(d) for d in var.shape)
    except Exception:
        return None


def numel(var):
    s = var_shape(var)
    if s is None:
        return 0
    n = 1
    for d in s:
        n *= d
    return n


def iter_slots(prog):
    """Yields (function name, consumer op, input name, index, var) for every input var of every
    ordinary op, in program order."""
    for fname, func in prog.functions.items():
        for op in iter_ops(func):
            if is_constish(op.op_type):
                continue
            for pname, v in op.inputs.items():
                vs = list(v) if isinstance(v, (list, tuple)) else [v]
                for j, var in enumerate(vs):
                    if var is None:
                        continue
                    yield fname, op, pname, j, var


def slot_key(fname, op, pname, j):
    return f"{fname}/{op.name}/{pname}/{j}"


def exact_value(var):
    """The const value of var as a numpy array. pymil already hands out the exact numpy type of
    the MIL dtype (fp16 stays float16, int32 int32, bool bool, string str_; sub-byte ints come
    out unpacked as coremltools' uint8/int8)."""
    import numpy as np

    val = var.val
    if val is None:
        return None
    arr = np.asarray(val)
    if arr.dtype == object:  # e.g. a list value: keep something comparable
        arr = np.asarray(repr(val))
    return arr


def op_histograms(prog, spec):
    """Per function: (pymil op histogram, protobuf op histogram), both over the function's block
    and, recursively, nested blocks.

    The two differ for compressed programs: coremltools' loader turns every iOS16 constexpr
    attribute and every inline value binding (iOS18 constexpr inputs) into a separate ``const``
    op, so pymil counts more consts than the protobuf holds. fixtures.json / verify.py report the
    pymil histogram."""
    py = OrderedDict()
    for fname, func in prog.functions.items():
        py[fname] = dict(sorted(Counter(op.op_type for op in iter_ops(func)).items()))
    pb = OrderedDict()

    def walk(block, h):
        for op in block.operations:
            h[op.type] += 1
            for b in op.blocks:
                walk(b, h)

    for fname, func in spec.mlProgram.functions.items():
        h = Counter()
        blk = func.block_specializations.get(func.opset)
        blocks = [blk] if blk is not None else list(func.block_specializations.values())
        for b in blocks:
            walk(b, h)
        pb[fname] = dict(sorted(h.items()))
    return py, pb


def weights_summary(prog):
    """verify.py's weight inventory: distinct const/constexpr output vars that are float, have
    >= 10 elements and are read by an ordinary op. Returns dict with count/parameters and the
    same for the compressed ones (producer is a constexpr op)."""
    seen = OrderedDict()
    for fname, op, pname, j, var in iter_slots(prog):
        if var.op is None or not is_constish(var.op.op_type):
            continue
        if dtype_str(var) not in FLOAT_DTYPES:
            continue
        seen[(fname, id(var))] = var
    ws = [v for v in seen.values() if numel(v) >= MIN_WEIGHT_ELEMS]
    comp = [v for v in ws if v.op.op_type != "const"]
    return {
        "weights": {"count": len(ws), "parameters": int(sum(numel(v) for v in ws))},
        "compressed": {"count": len(comp), "parameters": int(sum(numel(v) for v in comp))},
        "small_float_consts": len(seen) - len(ws),
    }


def main_wrapper(fn):
    """Runs fn(argv) -> exit code; a Die becomes 'error: ...' on stderr and exit 2."""
    try:
        code = fn(sys.argv[1:])
    except Die as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
