#!/usr/bin/env bash
# scripts/bench_quantize.sh - sdcompress quantize vs coremltools 9.0 linear_quantize_weights,
# int8 symmetric per channel, side by side in one run (not CI).
#
# Models: fixtures/tiny-sd-unet-ios18.mlpackage (1.07 M parameters) and a BERT-family encoder
# with all-MiniLM-L6-v2's shapes (scripts/make_bert_like.py, 22.4 M parameters). Each command
# runs under /usr/bin/time -v: wall seconds, CPU seconds (user + sys), peak RSS; the table gives
# the coremltools / sdcompress wall and CPU ratios and both weight.bin sizes.
#
# BENCH_PCS=1 measures 4-bit per-tensor palettization with per-channel scales instead
# (`sdcompress palettize --nbits 4 --per-channel-scale` vs palettize_weights with
# enable_per_channel_scale=True, benches/ct_palettize.py), the issue's second speed target.
#
# With BENCH_SD15=1 a third model is added: a synthetic SD-1.5-shaped UNet (examples/synth_unet.rs
# --arch sd15, 860 M fp16 parameters, 1.7 GB; ~3.5 GB of RSS for coremltools), or the package
# BENCH_REUSE/sd15.mlpackage when that exists.
#
# Environment: BENCH_PYTHON (Python with coremltools 9.0; default .venv/bin/python),
# BENCH_DIR (temporary directory parent; default target/), BENCH_THREADS (sdcompress --threads),
# BENCH_PCS=1, BENCH_SD15=1, BENCH_REUSE=DIR.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${BENCH_PYTHON:-$repo/.venv/bin/python}"
dir="$(mktemp -d "${BENCH_DIR:-$repo/target}/bench-quantize.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
threads=()
[ -n "${BENCH_THREADS:-}" ] && threads=(--threads "$BENCH_THREADS")
cargo build --release -q
sd="$repo/target/release/sdcompress"
"$py" scripts/make_bert_like.py "$dir/minilm.mlpackage" >/dev/null 2>&1 || { echo "error: make_bert_like.py failed" >&2; exit 1; }
models=("fixtures/tiny-sd-unet-ios18.mlpackage" "$dir/minilm.mlpackage")
if [ "${BENCH_SD15:-0}" = 1 ]; then
    if [ -n "${BENCH_REUSE:-}" ] && [ -d "$BENCH_REUSE/sd15.mlpackage" ]; then
        models+=("$BENCH_REUSE/sd15.mlpackage")
    else
        cargo build --release -q --example synth_unet
        "$repo/target/release/examples/synth_unet" --arch sd15 --seed 0 --out "$dir/sd15.mlpackage" >/dev/null
        models+=("$dir/sd15.mlpackage")
    fi
fi

measure() { # measure LOG CMD... -> "wall cpu rss_mb"
    local log=$1
    shift
    # The previous tool's output (up to 860 MB on SD-1.5) is written back first, so neither
    # tool is timed while the kernel flushes the other's pages.
    sync
    /usr/bin/time -v -o "$log" "$@" >/dev/null 2>&1
    awk -F': ' '/Elapsed \(wall/ {n=split($2,t,":"); w=(n==3)?t[1]*3600+t[2]*60+t[3]:t[1]*60+t[2]}
        /User time/ {u=$2} /System time/ {s=$2} /Maximum resident/ {r=$2}
        END {printf "%.2f %.2f %.0f\n", w, u+s, r/1024}' "$log"
}
size() { du -sb "$1/Data/com.apple.CoreML/weights" | cut -f1; }

printf '%-12s %-12s %8s %8s %9s %12s\n' model tool wall_s cpu_s rss_MB weight.bin
for m in "${models[@]}"; do
    name=$(basename "$m" .mlpackage)
    if [ "${BENCH_PCS:-0}" = 1 ]; then
        read -r cw cc cr < <(measure "$dir/ct.log" "$py" benches/ct_palettize.py "$m" -o "$dir/ct.mlpackage" \
            --nbits 4 --per-channel-scale --keep-output)
        read -r sw sc sr < <(measure "$dir/sd.log" "$sd" -q palettize "$m" -o "$dir/sd.mlpackage" \
            --nbits 4 --per-channel-scale "${threads[@]}")
    else
        read -r cw cc cr < <(measure "$dir/ct.log" "$py" benches/ct_quantize.py "$m" "$dir/ct.mlpackage")
        read -r sw sc sr < <(measure "$dir/sd.log" "$sd" -q quantize "$m" -o "$dir/sd.mlpackage" "${threads[@]}")
    fi
    printf '%-12s %-12s %8s %8s %9s %12s\n' "${name:0:12}" coremltools "$cw" "$cc" "$cr" "$(size "$dir/ct.mlpackage")"
    printf '%-12s %-12s %8s %8s %9s %12s\n' "${name:0:12}" sdcompress "$sw" "$sc" "$sr" "$(size "$dir/sd.mlpackage")"
    awk -v a="$cw" -v b="$sw" -v c="$cc" -v d="$sc" 'BEGIN {printf "%-12s ratio ct/sd: wall %.1fx, cpu %.1fx\n", "", a/(b>0?b:0.01), c/(d>0?d:0.01)}'
    rm -rf "$dir/ct.mlpackage" "$dir/sd.mlpackage"
done
