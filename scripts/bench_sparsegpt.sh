#!/usr/bin/env bash
# scripts/bench_sparsegpt.sh - the SparseGPT layer kernel against coremltools 9.0's torch SparseGPT
# on the same machine in one run (a benchmark, not a test).
#
# Layers: a 1280-channel 3x3 conv (W [1280,1280,3,3]: 11,520 Hessian columns, X 16 images at 16x16)
# and a 1280->1280 linear (X 4 samples x 1024 tokens), both seeded, with realistic activations
# (scripts/bench_sparsegpt.py gen). For each layer:
#   1. sdcompress builds H from X and dumps it (untimed), so both sides prune on the same H;
#   2. sdcompress, timed under /usr/bin/time -v: H from X, then SparseGPT 50 % (f64 factorisation);
#   3. coremltools' SparseGPT (torch, float32 as coremltools keeps H), timed under /usr/bin/time -v:
#      add_batch on X (its own H), then _compress_impl on our H; both results scored in float64
#      (loss of spec §9, relative reconstruction error, mask agreement).
# Prints a table (and JSON) of times, speed-ups, losses, CPU seconds and peak RSS.
#
# Needs a Python with torch (CPU), coremltools 9.0, numpy and safetensors:
# SDCOMPRESS_TORCH_PYTHON (default ../venv-torch/bin/python next to the repository), e.g.
#   python3 -m venv ../venv-torch && ../venv-torch/bin/pip install torch coremltools==9.0 numpy safetensors
# Outputs go to BENCH_DIR (default target/bench-sparsegpt; about 1.2 GB with the dumped Hessian).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${SDCOMPRESS_TORCH_PYTHON:-$repo/../venv-torch/bin/python}"
dir="${BENCH_DIR:-$repo/target/bench-sparsegpt}"
mkdir -p "$dir"
"$py" -c 'import torch, coremltools, safetensors' 2>/dev/null \
    || { echo "error: $py lacks torch/coremltools/safetensors (set SDCOMPRESS_TORCH_PYTHON)" >&2; exit 2; }

cargo build --release --example sparsegpt_layer
bin="$repo/target/release/examples/sparsegpt_layer"
[ -f "$dir/conv.safetensors" ] && [ -f "$dir/linear.safetensors" ] \
    || "$py" scripts/bench_sparsegpt.py gen "$dir"

for layer in conv linear; do
    flags=(--sparsity 0.5)
    [ "$layer" = conv ] && flags+=(--padding 1)
    echo "==> $layer: Hessian for both sides (untimed)" >&2
    "$bin" "$dir/$layer.safetensors" "${flags[@]}" --dump-h "$dir/$layer-H.safetensors" >/dev/null
    echo "==> $layer: sdcompress" >&2
    /usr/bin/time -v "$bin" "$dir/$layer.safetensors" "${flags[@]}" \
        --out "$dir/ours-$layer.safetensors" >"$dir/ours-$layer.json" 2>"$dir/ours-$layer.time"
    echo "==> $layer: coremltools SparseGPT (torch)" >&2
    /usr/bin/time -v "$py" scripts/bench_sparsegpt.py ct "$dir/$layer.safetensors" \
        "$dir/$layer-H.safetensors" "$dir/ours-$layer.safetensors" \
        >"$dir/ct-$layer.json" 2>"$dir/ct-$layer.time"
    rm -f "$dir/$layer-H.safetensors"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
"$py" scripts/bench_sparsegpt.py summary "$dir"
