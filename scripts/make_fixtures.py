#!/usr/bin/env python3
"""Regenerate the coremltools-compressed fixture variants from the base packages.

    python scripts/make_fixtures.py                  # rewrite fixtures/*.{p4-tensor,...}.mlpackage
    python scripts/make_fixtures.py --out DIR        # write elsewhere
    python scripts/make_fixtures.py --check          # regenerate into a temp dir and compare
                                                     # weight.bin bytes with the shipped fixtures

Pinned: coremltools==9.0, numpy==2.4.6 (scripts/requirements-interop.txt) plus
scikit-learn==1.9.1 (coremltools' k-means falls back to it for small groups):
    .venv/bin/pip install scikit-learn==1.9.1
OpenMP is limited to one thread: scikit-learn's k-means sums in thread order, and with more
threads the LUTs of small groups change in the last bits. With one thread all 11 variants come
out byte-identical to the shipped ones (`--check`). Each variant is one call of
coremltools.optimize.coreml on a base package (tiny-sd-unet = iOS17 target, so coremltools emits
the iOS16 constexpr ops; tiny-sd-unet-ios18 = iOS18 target, iOS18 ops). The base packages
themselves are conversions of seeded random diffusers UNets (torch + diffusers); they are inputs
here, see fixtures/fixtures.json ("how", "config") for how they were made.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures"


def variants():
    import coremltools.optimize.coreml as cto

    pal = cto.OpPalettizerConfig
    return {
        # name suffix: (base, [(api function, op config, extra kwargs), ...])
        "p4-tensor": ("tiny-sd-unet", [("palettize_weights", pal(mode="kmeans", nbits=4, granularity="per_tensor"), {})]),
        "p6-tensor": ("tiny-sd-unet", [("palettize_weights", pal(mode="kmeans", nbits=6, granularity="per_tensor"), {})]),
        "p8-uniform": ("tiny-sd-unet", [("palettize_weights", pal(mode="uniform", nbits=8), {})]),
        "prune0.4": ("tiny-sd-unet", [("prune_weights", cto.OpMagnitudePrunerConfig(target_sparsity=0.4), {})]),
        "prune-2of4": ("tiny-sd-unet", [("prune_weights", cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4)), {})]),
        "int8-channel": ("tiny-sd-unet", [("linear_quantize_weights", cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel"), {})]),
        "ios18.p4-tensor": ("tiny-sd-unet-ios18", [("palettize_weights", pal(mode="kmeans", nbits=4, granularity="per_tensor"), {})]),
        "ios18.p4-gs16": ("tiny-sd-unet-ios18", [("palettize_weights", pal(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16), {})]),
        "ios18.prune0.4": ("tiny-sd-unet-ios18", [("prune_weights", cto.OpMagnitudePrunerConfig(target_sparsity=0.4), {})]),
        "ios18.prune0.4-p4-gs16": ("tiny-sd-unet-ios18", [
            ("prune_weights", cto.OpMagnitudePrunerConfig(target_sparsity=0.4), {}),
            ("palettize_weights", pal(mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16), {"joint_compression": True}),
        ]),
        "ios18.int8-channel": ("tiny-sd-unet-ios18", [("linear_quantize_weights", cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel"), {})]),
    }


def out_name(suffix, base):
    # "ios18.p4-gs16" belongs to tiny-sd-unet-ios18 and is named tiny-sd-unet-ios18.p4-gs16.
    return f"{base}.{suffix.removeprefix('ios18.')}.mlpackage"


def build(out_dir: Path, only=None):
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    if ct.__version__ != "9.0":
        print(f"warning: coremltools {ct.__version__}, fixtures were made with 9.0", file=sys.stderr)
    made = []
    for suffix, (base, steps) in variants().items():
        name = out_name(suffix, base)
        if only and name not in only:
            continue
        model = ct.models.MLModel(str(FIX / f"{base}.mlpackage"), skip_model_load=True)
        for fn, op_config, kw in steps:
            model = getattr(cto, fn)(model, cto.OptimizationConfig(global_config=op_config), **kw)
        dst = out_dir / name
        if dst.exists():
            shutil.rmtree(dst)
        model.save(str(dst))
        made.append(name)
        print(f"wrote {dst}")
    return made


def sha(p: Path):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIX)
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare weight.bin with fixtures/")
    ap.add_argument("--only", nargs="*", help="package names to make")
    a = ap.parse_args()
    if not a.check:
        build(a.out, a.only)
        return 0
    bad = 0
    with tempfile.TemporaryDirectory() as t:
        for name in build(Path(t), a.only):
            w = Path("Data/com.apple.CoreML/weights/weight.bin")
            same = sha(Path(t) / name / w) == sha(FIX / name / w)
            print(f"{'same' if same else 'DIFFERENT'} weight.bin: {name}")
            bad += not same
    print(f"{bad} of the regenerated variants differ from fixtures/")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
