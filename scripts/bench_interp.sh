#!/usr/bin/env bash
# scripts/bench_interp.sh - how fast is the interpreter? `sdcompress run` against torch (CPU,
# same thread count) on a UNet with Stable Diffusion 1.5's architecture (859.5 M parameters,
# random weights) at 32x32 latents.
#
# 1. benches/interp_torch.py make: builds the diffusers UNet2DConditionModel (SD-1.5 config,
#    seed 0), records its fp32 outputs on 3 inputs, converts it with coremltools 9.0 (mlprogram,
#    fp16 weights, iOS18 target: scaled_dot_product_attention). Cached in $BENCH_DIR/sd15-L.
# 2. torch: fp32 forward per sample (median over the samples of the best of 3, after a warm-up),
#    torch.set_num_threads(T), under /usr/bin/time -v (peak RSS).
# 3. sdcompress run (release build) on the same inputs with --threads T, under /usr/bin/time -v;
#    seconds per sample as `run` reports it (mean over the samples, model load excluded).
# 4. the interpreter's output against torch's (rel L2; the package holds fp16 weights, so
#    about 1e-3 is expected).
# Prints one table with both times, the speed ratio (torch time / sdcompress time; the target
# is >= 0.5) and peak RSS of each process.
#
# Environment:
#   BENCH_PYTHON=PY   Python with torch (CPU), diffusers, coremltools 9.0, safetensors
#                     (default /work/venv-torch/bin/python)
#   BENCH_DIR=DIR     where the converted model is cached (default /work/bench-interp, else target/)
#   BENCH_LATENT=N    latent size (default 32)
#   BENCH_THREADS=T   threads for both (default: nproc)
#   BENCH_TARGET=T    ios18 (default) or ios17 (matmul/softmax attention)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${BENCH_PYTHON:-/work/venv-torch/bin/python}"
latent="${BENCH_LATENT:-32}"
threads="${BENCH_THREADS:-$(nproc)}"
target_os="${BENCH_TARGET:-ios18}"
base="${BENCH_DIR:-}"
if [ -z "$base" ]; then
    if [ -d /work ] && [ -w /work ]; then base=/work/bench-interp; else base="$repo/target/bench-interp"; fi
fi
dir="$base/sd15-$latent-$target_os"

step() { printf '\n==> %s\n' "$*" >&2; }

if [ ! -x /usr/bin/time ]; then
    echo "error: /usr/bin/time (GNU time) is required (apt-get install time)" >&2
    exit 1
fi
if ! "$py" -c 'import torch, diffusers, coremltools, safetensors' >/dev/null 2>&1; then
    echo "error: $py lacks torch/diffusers/coremltools/safetensors; e.g.:" >&2
    echo "  python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu" >&2
    echo "  /work/venv-torch/bin/pip install diffusers coremltools==9.0 safetensors" >&2
    exit 1
fi

step "cargo build --release --bin sdcompress"
cargo build --release --quiet --bin sdcompress
bin="${CARGO_TARGET_DIR:-$repo/target}/release/sdcompress"

if [ ! -d "$dir/unet.mlpackage" ] || [ ! -f "$dir/calib.safetensors" ]; then
    step "building and converting the SD-1.5-sized UNet into $dir (several minutes)"
    mkdir -p "$dir"
    OMP_NUM_THREADS="$threads" "$py" benches/interp_torch.py make --dir "$dir" --latent "$latent" --target "$target_os"
fi

step "torch fp32 forward, $threads threads"
/usr/bin/time -v -o "$dir/torch.time" env OMP_NUM_THREADS="$threads" \
    "$py" benches/interp_torch.py time --dir "$dir" --threads "$threads" >"$dir/torch.json"

step "sdcompress run, $threads threads"
/usr/bin/time -v -o "$dir/sdc.time" "$bin" run "$dir/unet.mlpackage" --inputs "$dir/calib.safetensors" \
    -o "$dir/out.safetensors" --force --threads "$threads" --profile 2>"$dir/sdc.err"

"$py" - "$dir" <<'PYEOF'
import json, re, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file

d = Path(sys.argv[1])

def gnu_time(p):
    t = p.read_text()
    get = lambda k: re.search(re.escape(k) + r":\s*(.+)", t).group(1).strip()
    wall = get("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(x) for x in wall.split(":")]
    secs = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    cpu = float(get("User time (seconds)")) + float(get("System time (seconds)"))
    return secs, cpu, int(get("Maximum resident set size (kbytes)")) / 1024

torch = json.loads((d / "torch.json").read_text())
err = (d / "sdc.err").read_text()
m = re.search(r"([0-9.]+)s per sample", err)
ours = float(m.group(1))
tw, tc, trss = gnu_time(d / "torch.time")
sw, sc, srss = gnu_time(d / "sdc.time")
out = load_file(str(d / "out.safetensors"))["noise_pred"].astype(np.float64)
ref = load_file(str(d / "calib.safetensors"))["noise_pred"].astype(np.float64)
rel = float(np.sqrt(((out - ref) ** 2).sum() / (ref ** 2).sum()))
ratio = torch["torch_seconds_per_sample"] / ours
print()
print(f"{'':28} {'s/sample':>9} {'process wall':>12} {'CPU s':>7} {'peak RSS':>10}")
print(f"{'torch ' + torch['torch'] + ' fp32':28} {torch['torch_seconds_per_sample']:9.3f} {tw:12.1f} {tc:7.1f} {trss:8.0f} MB")
print(f"{'sdcompress run':28} {ours:9.3f} {sw:12.1f} {sc:7.1f} {srss:8.0f} MB")
print(f"speed vs torch: {ratio:.2f}x (target >= 0.5), threads {torch['threads']}; output rel L2 vs torch {rel:.2e}")
print()
print("sdcompress time per op type (from --profile):")
for line in err.splitlines():
    if not line.startswith("wrote "):
        print("  " + line)
PYEOF
