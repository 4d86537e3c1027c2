#!/usr/bin/env bash
# scripts/bench_scale.sh - does sdcompress scale to a real-size UNet?
#
# Builds the release binaries, generates a synthetic SDXL-shaped package (examples/synth_unet.rs:
# 2,567,463,684 fp16 parameters, ~5.1 GB weight.bin) in a temporary directory, then measures
#   sdcompress info        (parse + validate every blob record)
#   sdcompress decompress  (on an uncompressed package: a full streaming copy, byte-identical)
# with /usr/bin/time -v (wall, user+sys CPU, peak RSS). While each command runs, /proc/PID/status
# is sampled to split resident memory into anonymous (heap) and file-backed (mmap'ed weight.bin)
# pages, because peak RSS alone counts every touched page of a memory-mapped input.
# Prints a table with "peak RSS / package size" and removes everything it wrote.
#
# Environment:
#   BENCH_DIR=DIR      where the temporary directory goes (default /work, else the repo's target/)
#   BENCH_ARCH=ARCH    sdxl (default), sd15 or tiny (quick smoke run)
#   BENCH_SEED=N       generator seed (default 0)
#   BENCH_KEEP=1       keep the generated packages (prints where)
#   BENCH_CMP=0        skip the byte comparison of the decompress output with its input
#
# Numbers are warm-cache: the package was just written, so reads come from the page cache.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
arch="${BENCH_ARCH:-sdxl}"
seed="${BENCH_SEED:-0}"
base="${BENCH_DIR:-}"
if [ -z "$base" ]; then
    if [ -d /work ] && [ -w /work ]; then base=/work; else base="$repo/target"; fi
fi

step() { printf '\n==> %s\n' "$*" >&2; }

if [ ! -x /usr/bin/time ]; then
    step "installing GNU time (/usr/bin/time is missing)"
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
    else
        echo "error: /usr/bin/time (GNU time) is required" >&2
        exit 1
    fi
fi

# Disk: the package plus the decompress output, with 10 % margin.
case "$arch" in
    sdxl) need=$((2 * 5200 * 1024 * 1024 * 11 / 10)) ;;
    sd15) need=$((2 * 1750 * 1024 * 1024 * 11 / 10)) ;;
    *) need=$((64 * 1024 * 1024)) ;;
esac
avail=$(df --output=avail -B1 "$base" | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need" ]; then
    echo "error: $base has $((avail >> 20)) MiB free, need about $((need >> 20)) MiB (set BENCH_DIR)" >&2
    exit 1
fi

step "cargo build --release --bin sdcompress --example synth_unet"
cargo build --release --quiet --bin sdcompress --example synth_unet
target="${CARGO_TARGET_DIR:-$repo/target}/release"
bin="$target/sdcompress"
gen="$target/examples/synth_unet"

tmp="$(mktemp -d "$base/sdcompress-bench.XXXXXX")"
cleanup() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
pkg="$tmp/$arch.mlpackage"
out="$tmp/$arch.decompressed.mlpackage"

# measure LABEL CMD...: runs CMD under /usr/bin/time -v and samples the child's
# /proc/PID/status every 20 ms; appends one row to $tmp/rows.
measure() {
    local label="$1"
    shift
    local tf="$tmp/$label.time" so="$tmp/$label.stdout" se="$tmp/$label.stderr"
    /usr/bin/time -v -o "$tf" "$@" >"$so" 2>"$se" &
    local tpid=$! cpid="" anon=0 file=0 a f
    while kill -0 "$tpid" 2>/dev/null; do
        if [ -z "$cpid" ]; then
            cpid="$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null | awk '{print $1}')" || true
        fi
        if [ -n "$cpid" ] && read -r a f < <(awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} END{print a+0, f+0}' \
            "/proc/$cpid/status" 2>/dev/null); then
            [ "$a" -gt "$anon" ] && anon=$a
            [ "$f" -gt "$file" ] && file=$f
        fi
        sleep 0.02
    done
    local rc=0
    wait "$tpid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "error: $label failed (exit $rc):" >&2
        tail -n 20 "$se" >&2
        exit 1
    fi
    awk -v label="$label" -v anon="$anon" -v file="$file" -F': ' '
        /Elapsed \(wall clock\)/ {
            n = split($2, p, ":"); w = 0
            for (i = 1; i <= n; i++) w = w * 60 + p[i]
        }
        /User time/ { u = $2 }
        /System time/ { s = $2 }
        /Maximum resident set size/ { r = $2 }
        END { printf "%s %.2f %.2f %.2f %d %d %d\n", label, w, u, s, r, anon, file }
    ' "$tf" >>"$tmp/rows"
}

load0="$(cut -d' ' -f1-3 /proc/loadavg)"
step "generating $arch package (seed $seed) in $tmp"
measure generate "$gen" --arch "$arch" --seed "$seed" --out "$pkg"
cat "$tmp/generate.stdout" >&2
pkg_bytes=$(du -sb "$pkg" | cut -f1)

step "sdcompress info"
measure info "$bin" info "$pkg"
sed -n '1,2p;/weights:/,/compressed:/p' "$tmp/info.stdout" >&2

step "sdcompress decompress (uncompressed input: full streaming copy)"
measure decompress "$bin" decompress "$pkg" -o "$out" --quiet
out_bytes=$(du -sb "$out" | cut -f1)
if [ "${BENCH_CMP:-1}" != 0 ]; then
    d=Data/com.apple.CoreML
    cmp "$pkg/$d/weights/weight.bin" "$out/$d/weights/weight.bin"
    cmp "$pkg/$d/model.mlmodel" "$out/$d/model.mlmodel"
    echo "decompress output is byte-identical to its input" >&2
fi

echo
echo "sdcompress scale benchmark: $arch, package $(awk -v b="$pkg_bytes" 'BEGIN{printf "%.3f GB (%.0f bytes)", b/1e9, b}'), output $(awk -v b="$out_bytes" 'BEGIN{printf "%.3f GB", b/1e9}')"
echo "host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo); warm page cache; load average at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v pkg="$pkg_bytes" '
    BEGIN {
        printf "%-11s %8s %8s %8s %8s %12s %12s %12s %9s\n", "command", "wall_s", "user_s", "sys_s", "cpu_s",
            "peak_rss_MB", "anon_max_MB", "file_max_MB", "rss/pkg"
    }
    {
        printf "%-11s %8.2f %8.2f %8.2f %8.2f %12.1f %12.1f %12.1f %9.4f\n", $1, $2, $3, $4, $3 + $4,
            $5 / 1024, $6 / 1024, $7 / 1024, ($5 * 1024) / pkg
    }
' "$tmp/rows"
echo "peak_rss = /usr/bin/time maximum resident set size (VmHWM: anonymous + file-backed pages);"
echo "anon_max / file_max = largest RssAnon / RssFile seen by sampling /proc every 20 ms."
