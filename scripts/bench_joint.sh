#!/usr/bin/env bash
# scripts/bench_joint.sh - joint sparse + palettized compression: sdcompress vs coremltools 9.0 (not CI)
#
# In one run on one machine, with /usr/bin/time -v (wall, user+sys CPU, peak RSS) around every
# command:
#
#   1. tiny    fixtures/tiny-sd-unet-ios18.mlpackage: coremltools prune_weights(target_sparsity F)
#              + palettize_weights(nbits 4, per_grouped_channel group 16, joint_compression=True)
#              (benches/ct_joint.py) vs `sdcompress prune --sparsity F --nbits 4 --group-size 16`
#              (one shot). Time ratio, weight.bin sizes, and the weight error of each output against
#              the dense input as coremltools decodes it (tests/interop/ct_weights.py --decompress +
#              sparse_facts.py): global SNR, and per weight how often ours is better/equal/worse.
#   2. subset  the same on a synthetic SD-1.5-shaped package with every BENCH_SUBSET-th layer
#              (examples/synth_unet.rs --subset; exact shapes), both tools.
#   3. sdxl    sdcompress alone on the synthetic SDXL-shaped package (2.57 B parameters; or every
#              BENCH_SDXL_SUBSET-th layer of it): F = 0.4 and 0.5, 4-bit, group size 16. weight.bin
#              in GiB next to the size formula's prediction (report totals.predicted_bytes), time,
#              peak RSS.
#
# Environment:
#   BENCH_DIR=DIR           where the temporary directory goes (default /work, else target/)
#   BENCH_PARTS="..."       any of: tiny subset sdxl (default: tiny)
#   BENCH_SPARSITY="..."    sparsities for parts 1-2 (default 0.4)
#   BENCH_SUBSET=N          part 2 keeps every N-th layer of SD-1.5 (default 10)
#   BENCH_SDXL_SUBSET=N     part 3 keeps every N-th layer of SDXL (default 1: the whole model)
#   BENCH_SDXL_SPARSITY="." sparsities for part 3 (default "0.4 0.5")
#   BENCH_PYTHON=PY         Python with coremltools 9.0 (default: the repository's .venv)
#   BENCH_KEEP=1            keep the temporary directory
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
parts=" ${BENCH_PARTS:-tiny} "
sparsities="${BENCH_SPARSITY:-0.4}"
subset_n="${BENCH_SUBSET:-10}"
sdxl_subset="${BENCH_SDXL_SUBSET:-1}"
sdxl_sparsities="${BENCH_SDXL_SPARSITY:-0.4 0.5}"
base="${BENCH_DIR:-}"
if [ -z "$base" ]; then
    if [ -d /work ] && [ -w /work ]; then base=/work; else base="$repo/target"; fi
fi
has() { [[ "$parts" == *" $1 "* ]]; }
step() { printf '\n==> %s\n' "$*" >&2; }

if [ ! -x /usr/bin/time ]; then
    echo "error: /usr/bin/time (GNU time) is required (apt-get install time)" >&2
    exit 1
fi
py="${BENCH_PYTHON:-$repo/.venv/bin/python}"
if (has tiny || has subset) && ! "$py" -c 'import coremltools' >/dev/null 2>&1; then
    echo "error: $py cannot import coremltools (set BENCH_PYTHON or run scripts/test.sh)" >&2
    exit 1
fi

tmp="$(mktemp -d "$base/sdcompress-jointbench.XXXXXX")"
cleanup() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

step "cargo build --release --bin sdcompress --example synth_unet"
cargo build --release --quiet --bin sdcompress --example synth_unet
target="${CARGO_TARGET_DIR:-$repo/target}/release"
bin="$target/sdcompress"
gen="$target/examples/synth_unet"

# timed NAME CMD...: runs CMD under /usr/bin/time -v; NAME.time holds wall, cpu, rss (KiB).
timed() {
    local name="$1"
    shift
    /usr/bin/time -v -o "$tmp/$name.tv" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || {
        echo "error: $name failed:" >&2
        cat "$tmp/$name.err" >&2
        exit 1
    }
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, t, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + t[i] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident/ { r = $2 }
        END { printf "%.2f %.2f %d\n", w, u + s, r }' "$tmp/$name.tv" >"$tmp/$name.time"
}
field() { cut -d' ' -f"$2" "$tmp/$1.time"; }
wbytes() { find "$1/Data/com.apple.CoreML/weights" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f\n", s }'; }

# compare ID INPUT: both tools on INPUT for every sparsity, one table row each.
compare() {
    local id="$1" input="$2" s
    for s in $sparsities; do
        local ours="$tmp/$id-$s-ours.mlpackage" theirs="$tmp/$id-$s-ct.mlpackage"
        step "$id F=$s: sdcompress prune --nbits 4 --group-size 16"
        timed "$id-$s-sd" "$bin" prune "$input" -o "$ours" --sparsity "$s" --nbits 4 \
            --group-size 16 --upgrade-opset --quiet --report "$tmp/$id-$s.report.json"
        step "$id F=$s: coremltools prune_weights + palettize_weights(joint_compression=True)"
        timed "$id-$s-ct" "$py" benches/ct_joint.py "$input" -o "$theirs" --sparsity "$s" \
            --nbits 4 --group-size 16
        step "$id F=$s: decoding both with coremltools"
        "$py" tests/interop/ct_weights.py --quiet "$input" "$tmp/$id-base.npz"
        "$py" tests/interop/ct_weights.py --quiet --decompress "$ours" "$tmp/$id-$s-ours.npz" \
            "$theirs" "$tmp/$id-$s-ct.npz"
        "$py" tests/interop/sparse_facts.py "$tmp/$id-base.npz" "$tmp/$id-$s-facts.json" \
            "$tmp/$id-$s-ours.npz" "$tmp/$id-$s-ct.npz"
        "$py" - "$tmp/$id-$s-facts.json" "$tmp/$id-$s-ours.npz" "$tmp/$id-$s-ct.npz" \
            "$tmp/$id-$s-ct.out" >"$tmp/$id-$s.snr" <<'PY'
import json, math, sys
facts = json.load(open(sys.argv[1]))
o, t = facts[sys.argv[2]], facts[sys.argv[3]]
ct = json.loads(open(sys.argv[4]).read())
sig = sum(x["sig"] for x in t.values())
so = sum(x["sse"] for x in o.values())
st = sum(x["sse"] for x in t.values())
b = sum(1 for k in t if o[k]["sse"] < t[k]["sse"] * (1 - 1e-9))
w = sum(1 for k in t if o[k]["sse"] > t[k]["sse"] * (1 + 1e-9))
zo = sum(x["zeros"] for x in o.values()) / sum(x["numel"] for x in o.values())
zt = sum(x["zeros"] for x in t.values()) / sum(x["numel"] for x in t.values())
print(f"{10*math.log10(sig/so):.2f} {10*math.log10(sig/st):.2f} {b} {len(t)-b-w} {w} {zo:.4f} {zt:.4f} "
      f"{ct['prune']['wall_s'] + ct['palettize']['wall_s']:.2f}")
PY
        read -r snr_o snr_t better equal worse zo zt ct_pass <"$tmp/$id-$s.snr"
        rows+=("$(printf '| %s | %s | %s s / %s s (%s s in prune+palettize) | %s s / %s s | %.1f× / %.1f× | %s / %s | %s / %s | %s / %s dB | %s / %s / %s | %s / %s MB |' \
            "$id" "$s" "$(field "$id-$s-sd" 1)" "$(field "$id-$s-ct" 1)" "$ct_pass" "$(field "$id-$s-sd" 2)" \
            "$(field "$id-$s-ct" 2)" "$(echo "$(field "$id-$s-ct" 1) / $(field "$id-$s-sd" 1)" | bc -l)" \
            "$(echo "$(field "$id-$s-ct" 2) / $(field "$id-$s-sd" 2)" | bc -l)" \
            "$(wbytes "$ours")" "$(wbytes "$theirs")" "$zo" "$zt" "$snr_o" "$snr_t" \
            "$better" "$equal" "$worse" \
            "$(($(field "$id-$s-sd" 3) / 1024))" "$(($(field "$id-$s-ct" 3) / 1024))")")
        rm -rf "$ours" "$theirs" "$tmp"/*.npz
    done
}

rows=()
if has tiny; then
    compare tiny fixtures/tiny-sd-unet-ios18.mlpackage
fi
if has subset; then
    step "generating the SD-1.5 subset (every $subset_n-th layer)"
    "$gen" --arch sd15 --subset "$subset_n" --target ios18 --out "$tmp/sd15-sub.mlpackage" --force >/dev/null
    compare "sd15-every$subset_n" "$tmp/sd15-sub.mlpackage"
    rm -rf "$tmp/sd15-sub.mlpackage"
fi

xrows=()
if has sdxl; then
    step "generating the SDXL-shaped package (subset $sdxl_subset)"
    sub=()
    [ "$sdxl_subset" != 1 ] && sub=(--subset "$sdxl_subset")
    "$gen" --arch sdxl "${sub[@]}" --target ios18 --out "$tmp/sdxl.mlpackage" --force >/dev/null
    in_bytes=$(wbytes "$tmp/sdxl.mlpackage")
    for s in $sdxl_sparsities; do
        step "sdxl F=$s: sdcompress prune --sparsity $s --nbits 4 --group-size 16"
        timed "sdxl-$s" "$bin" prune "$tmp/sdxl.mlpackage" -o "$tmp/sdxl-$s.mlpackage" \
            --sparsity "$s" --nbits 4 --group-size 16 --quiet --report "$tmp/sdxl-$s.report.json"
        read -r pred params comp snr <<<"$("$py" -c '
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
print(t["predicted_bytes"], t["parameters"], t["compressed_parameters"], round(t["global_snr_db"], 2))' "$tmp/sdxl-$s.report.json")"
        out_bytes=$(wbytes "$tmp/sdxl-$s.mlpackage")
        xrows+=("$(printf '| sdxl/%s | %s | %s | %.3f GiB (%s B) | %.3f GiB | %.3f GiB | %s dB | %s s | %s s | %s MB |' \
            "$sdxl_subset" "$s" "$params" "$(echo "$out_bytes / 1073741824" | bc -l)" "$out_bytes" \
            "$(echo "$pred / 1073741824" | bc -l)" "$(echo "$in_bytes / 1073741824" | bc -l)" "$snr" \
            "$(field "sdxl-$s" 1)" "$(field "sdxl-$s" 2)" "$(($(field "sdxl-$s" 3) / 1024))")")
        rm -rf "$tmp/sdxl-$s.mlpackage"
    done
fi

echo
echo "sdcompress $("$bin" --version | cut -d' ' -f2), $(nproc) cores, $(date -u +%Y-%m-%d)"
if [ ${#rows[@]} -gt 0 ]; then
    echo
    echo "| model | F | wall sd / ct | CPU sd / ct | speed-up wall / CPU | weight.bin sd / ct (B) | decoded sparsity sd / ct | global SNR sd / ct | per weight better / equal / worse | peak RSS sd / ct |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
fi
if [ ${#xrows[@]} -gt 0 ]; then
    echo
    echo "| model | F (4-bit, group 16) | parameters | weight.bin | size formula | input | global SNR | wall | CPU | peak RSS |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${xrows[@]}"
fi
