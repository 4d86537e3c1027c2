#!/usr/bin/env bash
# scripts/bench_palettize.sh - sdcompress palettize vs coremltools 9.0 palettize_weights (not CI)
#
# In one run on one machine, with /usr/bin/time -v (wall, user+sys CPU, peak RSS) around every
# command and /proc/PID/status sampled every 0.1 s (largest RssAnon / RssFile):
#
#   1. tiny  fixtures/tiny-sd-unet-ios18.mlpackage (1.07 M parameters): coremltools
#            palettize_weights (benches/ct_palettize.py: OpPalettizerConfig kmeans nbits 4
#            per_tensor, and per_grouped_channel group_size 16) vs `sdcompress palettize --nbits 4`
#            and `--nbits 4 --group-size 16`, plus both tools with a weight_threshold so large that
#            nothing is compressed: coremltools' fixed load / milproto->pymil->protobuf / save cost.
#            Ratios ct/sd with that fixed cost and without it.
#   2. subset a synthetic SD-1.5-shaped package with every BENCH_SUBSET-th conv/linear (and norm)
#            layer (examples/synth_unet.rs --subset; exact shapes): the same three settings for
#            both tools, throughput in million compressed parameters per second, ratios.
#   3. full  sdcompress alone on the full synthetic SD-1.5 (859.5 M params) and SDXL (2.57 B)
#            packages, both settings, each with a timeout (BENCH_TIMEOUT); bits/weight from the
#            --report JSON, and coremltools' time extrapolated from its part-2 throughput.
#
# Correctness checks on the way: both tools must compress the same number of weights and
# parameters (parts 1 and 2) and write weight.bin files of the same size (net of each tool's noop
# run: coremltools re-serializes the whole program and deduplicates identical consts, such as the
# synthetic packages' zero biases, so its noop output can be smaller); sdcompress's outputs of
# parts 1 and 2 are loaded by coremltools' milproto frontend (ct_palettize.py --load-check);
# `sdcompress info --json` on every part-3 output must count the same compressed weights as the
# report. Mismatches are printed in the table, not fatal; the script always prints the table.
#
# Python: BENCH_PYTHON, else the repository's .venv (scripts/test.sh creates it) if present,
# else a fresh venv in the bench directory with coremltools==9.0 numpy==2.4.6 scikit-learn==1.9.1
# (removed with it). coremltools' k-means needs scikit-learn for tensors below 10,000 elements (and
# for non-fp16 ones); if the chosen Python lacks it, scikit-learn==1.9.1 is pip-installed into it.
#
# Environment:
#   BENCH_DIR=DIR        where the temporary directory goes (default /work, else target/)
#   BENCH_PARTS="..."    any of: tiny subset full (default: all three)
#   BENCH_ARCHS="..."    archs for part 3 (default: "sd15 sdxl")
#   BENCH_SUBSET=N       part 2 keeps every N-th layer (default 10: 95.6 M of 859.5 M params)
#   BENCH_TIMEOUT=S      limit for each sdcompress run in part 3, seconds (default 2400)
#   BENCH_SEED=N         generator seed (default 0)
#   BENCH_PYTHON=PY      Python with coremltools 9.0 to use
#   BENCH_KEEP=1         keep the temporary directory (prints where)
#   BENCH_CT_FULL=1      part 3 also runs coremltools on the full packages (measured, not
#                        extrapolated; SD-1.5 takes ~5 + ~14 min, SDXL about three times that)
#   BENCH_REUSE=DIR      part 3 uses DIR/<arch>.mlpackage when it exists (a package an earlier
#                        run or examples/synth_unet wrote with the same seed) instead of generating
#                        it, and leaves it in place (saves ~2 min and 5 GB of writes for SDXL)
#
# Disk: about 8 GB with part 3's SDXL (5.1 GB package + its output; SD-1.5 is removed before).
# Numbers are warm-cache (the packages were just written), each command starting after a `sync`. The machine may be shared: the
# table shows CPU seconds next to wall time; sdcompress uses all cores, coremltools mostly one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
parts=" ${BENCH_PARTS:-tiny subset full} "
archs="${BENCH_ARCHS:-sd15 sdxl}"
subset_n="${BENCH_SUBSET:-10}"
limit="${BENCH_TIMEOUT:-2400}"
seed="${BENCH_SEED:-0}"
base="${BENCH_DIR:-}"
if [ -z "$base" ]; then
    if [ -d /work ] && [ -w /work ]; then base=/work; else base="$repo/target"; fi
fi
has() { [[ "$parts" == *" $1 "* ]]; }
step() { printf '\n==> %s\n' "$*" >&2; }
huge=1000000000000 # weight_threshold that no tensor exceeds: nothing is compressed

if [ ! -x /usr/bin/time ]; then
    step "installing GNU time (/usr/bin/time is missing)"
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
    else
        echo "error: /usr/bin/time (GNU time) is required" >&2
        exit 1
    fi
fi

need=$((256 * 1024 * 1024))
has subset && need=$((need + 700 * 1024 * 1024))
if has full && [ -z "${BENCH_REUSE:-}" ]; then
    case " $archs " in
        *" sdxl "*) need=$((need + 6600 * 1024 * 1024)) ;;
        *" sd15 "*) need=$((need + 2300 * 1024 * 1024)) ;;
    esac
fi
avail=$(df --output=avail -B1 "$base" | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need" ]; then
    echo "error: $base has $((avail >> 20)) MiB free, need about $((need >> 20)) MiB (set BENCH_DIR)" >&2
    exit 1
fi

tmp="$(mktemp -d "$base/sdcompress-palbench.XXXXXX")"
cleanup() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Python with coremltools 9.0 (+ scikit-learn)
# ---------------------------------------------------------------------------------------------
pins=(coremltools==9.0 numpy==2.4.6 scikit-learn==1.9.1)
py="${BENCH_PYTHON:-}"
py_from="BENCH_PYTHON"
if [ -z "$py" ] && [ -x "$repo/.venv/bin/python" ]; then
    py="$repo/.venv/bin/python"
    py_from="repository .venv"
fi
if [ -z "$py" ]; then
    step "creating a Python venv in $tmp/venv (${pins[*]})"
    python3 -m venv "$tmp/venv" || {
        echo "error: 'python3 -m venv' failed; on Debian: apt-get install python3-venv" >&2
        exit 1
    }
    py="$tmp/venv/bin/python"
    py_from="fresh venv in the bench directory"
    "$py" -m pip install --quiet --disable-pip-version-check --no-input "${pins[@]}"
fi
if ! "$py" -c 'import coremltools' >/dev/null 2>&1; then
    echo "error: $py cannot import coremltools" >&2
    exit 1
fi
if ! "$py" -c 'import sklearn' >/dev/null 2>&1; then
    step "installing scikit-learn==1.9.1 into $py (coremltools' k-means needs it for small tensors)"
    "$py" -m pip install --quiet --disable-pip-version-check --no-input scikit-learn==1.9.1
fi
export TQDM_DISABLE=1 PYTHONDONTWRITEBYTECODE=1
ct_version="$("$py" -c 'import warnings; warnings.filterwarnings("ignore"); import coremltools, numpy, sklearn; print(f"coremltools {coremltools.__version__}, numpy {numpy.__version__}, scikit-learn {sklearn.__version__}")' 2>/dev/null)"
case "$ct_version" in
    "coremltools 9.0,"*) ;;
    *) echo "warning: not coremltools 9.0: $ct_version" >&2 ;;
esac
helper="$repo/benches/ct_palettize.py"

step "cargo build --release --bin sdcompress --example synth_unet"
cargo build --release --quiet --bin sdcompress --example synth_unet
target="${CARGO_TARGET_DIR:-$repo/target}/release"
bin="$target/sdcompress"
gen="$target/examples/synth_unet"

# ---------------------------------------------------------------------------------------------
# measure LABEL LIMIT_S CMD...: runs CMD under /usr/bin/time -v, samples the child's
# /proc/PID/status every 0.1 s (without forking), sends SIGTERM to the child after LIMIT_S
# seconds (0 = no limit). Appends one JSON line to $tmp/rows.jsonl; never fails.
# ---------------------------------------------------------------------------------------------
measure() {
    local label="$1" lim="$2"
    shift 2
    local tf="$tmp/$label.time" so="$tmp/$label.stdout" se="$tmp/$label.stderr"
    # Flush earlier runs' outputs first (not timed): otherwise their write-back lands in this
    # run's wall time (an SDXL per-tensor run measured 15.6 s right after the SD-1.5 runs, 6.5 s
    # after a sync).
    sync
    /usr/bin/time -v -o "$tf" "$@" >"$so" 2>"$se" &
    local tpid=$! cpid="" anon=0 file=0 a f k v rest start=${EPOCHREALTIME/./} killed=0
    while kill -0 "$tpid" 2>/dev/null; do
        if [ -z "$cpid" ]; then
            read -r cpid rest <"/proc/$tpid/task/$tpid/children" 2>/dev/null || true
        fi
        if [ -n "$cpid" ] && [ -r "/proc/$cpid/status" ]; then
            a=0 f=0
            while read -r k v rest; do
                case "$k" in
                    RssAnon:) a=$v ;;
                    RssFile:) f=$v ;;
                esac
            done <"/proc/$cpid/status" 2>/dev/null || true
            [ "$a" -gt "$anon" ] && anon=$a
            [ "$f" -gt "$file" ] && file=$f
        fi
        if [ "$lim" -gt 0 ] && [ "$killed" = 0 ] && [ $((${EPOCHREALTIME/./} - start)) -ge $((lim * 1000000)) ] && [ -n "$cpid" ]; then
            echo "  $label: still running after ${lim}s: sending SIGTERM to pid $cpid" >&2
            kill -TERM "$cpid" 2>/dev/null || true
            killed=1
        fi
        sleep 0.1
    done
    local rc=0
    wait "$tpid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "  $label: exit $rc$([ "$killed" = 1 ] && echo " (timeout ${lim}s)"); stderr:" >&2
        tail -n 5 "$se" | sed 's/^/    /' >&2
    fi
    awk -v label="$label" -v rc="$rc" -v lim="$lim" -v killed="$killed" -v anon="$anon" -v file="$file" -F': ' '
        /Elapsed \(wall clock\)/ {
            n = split($2, p, ":"); w = 0
            for (i = 1; i <= n; i++) w = w * 60 + p[i]
        }
        /User time/ { u = $2 }
        /System time/ { s = $2 }
        /Maximum resident set size/ { r = $2 }
        END {
            printf "{\"label\":\"%s\",\"rc\":%d,\"limit\":%d,\"timeout\":%s,\"wall\":%.2f,\"user\":%.2f,\"sys\":%.2f,\"rss_kb\":%d,\"anon_kb\":%d,\"file_kb\":%d}\n",
                label, rc, lim, (killed == 1 ? "true" : "false"), w, u, s, r, anon, file
        }
    ' "$tf" >>"$tmp/rows.jsonl"
}

# sd LABEL LIMIT IN ARGS...: sdcompress palettize IN -> $tmp/LABEL.mlpackage (kept; see drop).
sd() {
    local label="$1" lim="$2" in="$3"
    shift 3
    local out="$tmp/$label.mlpackage"
    measure "$label" "$lim" "$bin" palettize "$in" -o "$out" "$@" --force --quiet \
        --report "$tmp/$label.report.json"
    if [ -d "$out" ]; then
        stat -c %s "$out/Data/com.apple.CoreML/weights/weight.bin" >"$tmp/$label.wbin"
        "$bin" info --json "$out" >"$tmp/$label.info.json" 2>/dev/null || true
    fi
}
# ct LABEL IN ARGS...: coremltools palettize_weights (output counted, then removed by the helper).
ct() {
    local label="$1" in="$2"
    shift 2
    measure "$label" 0 "$py" "$helper" "$in" -o "$tmp/$label.mlpackage" "$@"
}
# load_check LABEL: coremltools' milproto frontend loads sdcompress's output $tmp/LABEL.mlpackage.
load_check() {
    if [ -d "$tmp/$1.mlpackage" ]; then
        "$py" "$helper" --load-check "$tmp/$1.mlpackage" >"$tmp/$1.load.json" 2>"$tmp/$1.load.err" || true
    fi
}
drop() { for l in "$@"; do rm -rf "${tmp:?}/$l.mlpackage"; done; }

load0="$(cut -d' ' -f1-3 /proc/loadavg)"
t_start=$SECONDS

if has tiny; then
    fx="$repo/fixtures/tiny-sd-unet-ios18.mlpackage"
    step "part 1: tiny fixture $(basename "$fx")"
    ct tiny.ct.noop "$fx" --weight-threshold "$huge"
    sd tiny.sd.noop 0 "$fx" --nbits 4 --weight-threshold "$huge"
    ct tiny.ct.p4t "$fx" --granularity per_tensor --nbits 4
    sd tiny.sd.p4t 0 "$fx" --nbits 4
    ct tiny.ct.gs16 "$fx" --granularity per_grouped_channel --group-size 16 --nbits 4
    sd tiny.sd.gs16 0 "$fx" --nbits 4 --group-size 16
    load_check tiny.sd.p4t
    load_check tiny.sd.gs16
    drop tiny.sd.noop tiny.sd.p4t tiny.sd.gs16
fi

if has subset; then
    pkg="$tmp/sd15-sub$subset_n.mlpackage"
    step "part 2: SD-1.5-shaped subset (every ${subset_n}th layer) -> $pkg"
    measure gen.sd15-sub 0 "$gen" --arch sd15 --subset "$subset_n" --seed "$seed" --out "$pkg"
    cat "$tmp/gen.sd15-sub.stdout" >&2
    ct sub.ct.noop "$pkg" --weight-threshold "$huge"
    sd sub.sd.noop 0 "$pkg" --nbits 4 --weight-threshold "$huge"
    ct sub.ct.p4t "$pkg" --granularity per_tensor --nbits 4
    sd sub.sd.p4t 0 "$pkg" --nbits 4
    ct sub.ct.gs16 "$pkg" --granularity per_grouped_channel --group-size 16 --nbits 4
    sd sub.sd.gs16 0 "$pkg" --nbits 4 --group-size 16
    load_check sub.sd.p4t
    load_check sub.sd.gs16
    drop sub.sd.noop sub.sd.p4t sub.sd.gs16
    rm -rf "$pkg"
fi

if has full; then
    for arch in $archs; do
        pkg="$tmp/$arch.mlpackage"
        reused=0
        if [ -n "${BENCH_REUSE:-}" ] && [ -d "$BENCH_REUSE/$arch.mlpackage" ]; then
            pkg="$BENCH_REUSE/$arch.mlpackage"
            reused=1
            step "part 3: full $arch-shaped package (reused) $pkg"
        else
            step "part 3: full $arch-shaped package -> $pkg"
            measure "gen.$arch" 0 "$gen" --arch "$arch" --seed "$seed" --out "$pkg"
            cat "$tmp/gen.$arch.stdout" >&2
            du -sb "$pkg" | cut -f1 >"$tmp/gen.$arch.bytes"
        fi
        # Warm the page cache with the input (not timed), as for a package just written: after
        # the other model's runs a reused SDXL package was partly evicted, and its first run
        # paid the disk reads (11.4 s wall / 15.2 CPU s against 4.7-5.3 s / 7.4-8.0 s warm).
        cat "$pkg/Data/com.apple.CoreML/weights/weight.bin" >/dev/null
        step "sdcompress palettize --nbits 4 ($arch)"
        sd "full.$arch.p4t" "$limit" "$pkg" --nbits 4
        drop "full.$arch.p4t"
        step "sdcompress palettize --nbits 4 --group-size 16 ($arch, limit ${limit}s)"
        sd "full.$arch.gs16" "$limit" "$pkg" --nbits 4 --group-size 16
        drop "full.$arch.gs16"
        if [ "${BENCH_CT_FULL:-0}" = 1 ]; then
            # Measured on the same package: the subset extrapolation understated coremltools'
            # SD-1.5 group-16 time by ~15 % (699 s against 821 s).
            step "coremltools palettize_weights per tensor and group 16 ($arch; minutes)"
            ct "full.$arch.ct.p4t" "$pkg" --granularity per_tensor --nbits 4
            ct "full.$arch.ct.gs16" "$pkg" --granularity per_grouped_channel --group-size 16 --nbits 4
        fi
        [ "$reused" = 1 ] || rm -rf "$pkg"
    done
fi

# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
dirty="$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
echo
echo "sdcompress palettize vs coremltools palettize_weights: commit $commit$([ "$dirty" != 0 ] && echo " (+$dirty modified files)")"
echo "host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo); $ct_version ($py_from); warm page cache"
echo "load average at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg); total $((SECONDS - t_start)) s"
"$py" - "$tmp" "$subset_n" <<'PYEOF'
import json, os, sys

tmp, subset_n = sys.argv[1], sys.argv[2]
rows = {}
for line in open(os.path.join(tmp, "rows.jsonl")):
    r = json.loads(line)
    rows[r["label"]] = r


def load(label, ext):
    p = os.path.join(tmp, f"{label}.{ext}")
    try:
        with open(p) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None


def text(label, ext):
    try:
        with open(os.path.join(tmp, f"{label}.{ext}")) as f:
            return f.read().strip()
    except OSError:
        return None


def sd_row(label):
    """wall, cpu, rss, weight.bin, compressed, compressed params, report totals (or error)."""
    m = rows.get(label)
    if m is None:
        return None
    rep = load(label, "report.json")
    d = {"wall": m["wall"], "cpu": m["user"] + m["sys"], "rss": m["rss_kb"] / 1024,
         "anon": m["anon_kb"] / 1024, "rc": m["rc"], "timeout": m["timeout"]}
    if m["rc"] != 0 or rep is None:
        last = (text(label, "stderr") or "").splitlines()
        why = f"TIMEOUT (SIGTERM after the {m['limit']} s limit)" if m["timeout"] else f"exit {m['rc']}"
        d["error"] = why + (": " + last[-1] if last else "")
        return d
    t = rep["totals"]
    d.update(wbin=int(text(label, "wbin") or 0), n=t["compressed"], weights=t["weights"],
             params=t["parameters"], cparams=t["compressed_parameters"],
             bpw=t.get("bits_per_weight"), bpcw=t.get("bits_per_compressed_weight"),
             snr=t.get("global_snr_db"), inner=t.get("wall_seconds"))
    info = load(label, "info.json")
    if info is not None:
        d["info_n"] = info.get("compressed", {}).get("count")
    return d


def ct_row(label):
    m = rows.get(label)
    if m is None:
        return None
    j = load(label, "stdout")
    d = {"proc_wall": m["wall"], "proc_cpu": m["user"] + m["sys"], "rss": m["rss_kb"] / 1024,
         "anon": m["anon_kb"] / 1024, "rc": m["rc"]}
    if m["rc"] != 0 or not j or "error" in j:
        last = (text(label, "stderr") or "").splitlines()
        d["error"] = f"exit {m['rc']}: " + ((j or {}).get("error") or (last[-1] if last else ""))
        return d
    d.update(wall=j["total"]["wall_s"], cpu=j["total"]["cpu_s"], imp=j["import"]["wall_s"],
             wbin=j["weight_bin_bytes"], n=j["compressed"], cparams=j["compressed_parameters"],
             phases={k: j[k]["wall_s"] for k in ("load", "palettize", "save")})
    return d


def f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def ratio(a, b):
    return None if a is None or not b else a / b


HDR = f"{'setting':<9} {'tool':<11} {'wall_s':>8} {'cpu_s':>8} {'rss_MB':>7} {'weight.bin':>11} {'compr':>9} {'Mparam/s':>9} {'ct/sd wall':>10} {'ct/sd cpu':>9} {'net wall':>8} {'net cpu':>7}  check"


def compare(label_prefix, settings, title, params_note):
    print()
    print(title)
    print(params_note)
    print(HDR)
    ctn = ct_row(f"{label_prefix}.ct.noop")
    sdn = sd_row(f"{label_prefix}.sd.noop")
    thr = {}
    for s in settings:
        c = ct_row(f"{label_prefix}.ct.{s}")
        d = sd_row(f"{label_prefix}.sd.{s}")
        if c is None and d is None:
            continue
        for tool, r in (("coremltools", c), ("sdcompress", d)):
            if r is None:
                continue
            if "error" in r:
                print(f"{s:<9} {tool:<11} FAILED: {r['error']}")
                continue
            cp = r.get("cparams")
            mps = cp / r["wall"] / 1e6 if cp and r["wall"] else None
            line = (f"{s:<9} {tool:<11} {r['wall']:>8.2f} {r['cpu']:>8.2f} {r['rss']:>7.0f} "
                    f"{r['wbin']:>11,d} {str(r['n']) + (('/' + str(r['weights'])) if 'weights' in r else ''):>9} "
                    f"{f(mps):>9}")
            if tool == "sdcompress" and c is not None and "error" not in c:
                rw = ratio(c["wall"], r["wall"])
                rc = ratio(c["cpu"], r["cpu"])
                nw = nc = None
                if s != "noop" and ctn and "error" not in ctn:
                    nw = ratio(c["wall"] - ctn["wall"], r["wall"])
                    nc = ratio(c["cpu"] - ctn["cpu"], r["cpu"])
                # coremltools re-serializes the whole program (its passes deduplicate identical
                # consts, e.g. the synthetic packages' zero biases), so its no-op output can be
                # smaller than the input; the compressed part is compared net of each tool's noop.
                okn = ctn and sdn and "error" not in ctn and "error" not in sdn
                dct = c["wbin"] - ctn["wbin"] if okn else None
                dsd = r["wbin"] - sdn["wbin"] if okn else None
                if c["n"] != r["n"] or c["cparams"] != r["cparams"]:
                    chk = (f"MISMATCH: ct {c['n']} weights/{c['cparams']} params, "
                           f"sd {r['n']}/{r['cparams']}")
                elif c["wbin"] == r["wbin"]:
                    chk = "same weights+size"
                elif s == "noop":
                    chk = f"ct rewrites the rest: {c['wbin'] - r['wbin']:+,d} B"
                elif dct is not None and dct == dsd:
                    chk = f"same weights, same size net of noop ({dsd:+,d} B)"
                else:
                    chk = (f"SIZE MISMATCH: ct {c['wbin']:,d} B ({f(dct, '{:+,d}')} vs its noop), "
                           f"sd {r['wbin']:,d} B ({f(dsd, '{:+,d}')})")
                lc = load(f"{label_prefix}.sd.{s}", "load.json")
                if s != "noop":
                    chk += "; ct loads sd output" if lc and lc.get("loaded") else "; ct LOAD FAILED"
                line += f" {f(rw, '{:.1f}x'):>10} {f(rc, '{:.1f}x'):>9} {f(nw, '{:.1f}x'):>8} {f(nc, '{:.1f}x'):>7}  {chk}"
                if s != "noop":
                    thr[s] = {"ct_wall": c["wall"], "ct_cpu": c["cpu"], "cparams": c["cparams"],
                              "net_wall": c["wall"] - (ctn["wall"] if ctn and "error" not in ctn else 0),
                              "sd_wall": r["wall"]}
            elif tool == "coremltools":
                ph = r["phases"]
                line += (f" {'':>10} {'':>9} {'':>8} {'':>7}  load {ph['load']:.2f} + palettize "
                         f"{ph['palettize']:.2f} + save {ph['save']:.2f} s (+{r['imp']:.1f} s import; "
                         f"process {r['proc_wall']:.1f} s)")
            print(line)
    return thr


out_thr = {}
if any(k.startswith("tiny.") for k in rows):
    compare("tiny", ["noop", "p4t", "gs16"],
            "1. tiny fixture tiny-sd-unet-ios18.mlpackage: coremltools palettize_weights vs sdcompress palettize",
            "   noop = weight_threshold 1e12 (nothing compressed); p4t = kmeans 4-bit per tensor; gs16 = kmeans 4-bit per_grouped_channel group_size 16")
if any(k.startswith("sub.") for k in rows):
    g = rows.get("gen.sd15-sub")
    out_thr = compare("sub", ["noop", "p4t", "gs16"],
                      f"2. SD-1.5-shaped subset (synth_unet --arch sd15 --subset {subset_n}): both tools",
                      "   Mparam/s = compressed parameters / wall; ct/sd = coremltools time / sdcompress time; net = coremltools minus its noop run")
    for s, t in out_thr.items():
        print(f"   {s}: coremltools {t['cparams'] / t['ct_wall'] / 1e6:.3f} Mparam/s wall "
              f"({t['cparams'] / t['net_wall'] / 1e6:.3f} net of its noop), "
              f"{t['cparams'] / t['ct_cpu'] / 1e6:.3f} Mparam per CPU s; "
              f"sdcompress {t['cparams'] / t['sd_wall'] / 1e6:.3f} Mparam/s wall")

full = [k for k in rows if k.startswith("full.")]
if full:
    print()
    print("3. sdcompress on the full synthetic packages (coremltools extrapolated from part 2's wall throughput, same setting;")
    print("   with BENCH_CT_FULL=1 also measured: ct_s, and ct/sd from it)")
    print(f"{'model':<6} {'setting':<7} {'wall_s':>8} {'cpu_s':>8} {'rss_MB':>7} {'anon_MB':>7} {'weight.bin':>14} {'GiB':>6} {'bits/w':>6} {'b/cw':>6} {'compr':>9} {'SNR_dB':>6} {'Mparam/s':>8} {'ct_est_s':>8} {'ct_s':>8} {'ct/sd':>6}  check")
    for arch in ("sd15", "sdxl", "tiny"):
        g = rows.get(f"gen.{arch}")
        for s in ("p4t", "gs16"):
            r = sd_row(f"full.{arch}.{s}")
            if r is None:
                continue
            if "error" in r:
                print(f"{arch:<6} {s:<7} {r['wall']:>8.2f} {r['cpu']:>8.2f} {r['rss']:>7.0f} {r['anon']:>7.0f}  FAILED: {r['error']}")
                continue
            t = out_thr.get(s)
            est = r["cparams"] / (t["cparams"] / t["ct_wall"]) if t else None
            c = ct_row(f"full.{arch}.ct.{s}")
            measured = c["wall"] if c is not None and "error" not in c else None
            chk = "info agrees" if r.get("info_n") == r["n"] else f"info says {r.get('info_n')} compressed"
            if c is not None and "error" in c:
                chk += f"; coremltools FAILED: {c['error']}"
            print(f"{arch:<6} {s:<7} {r['wall']:>8.2f} {r['cpu']:>8.2f} {r['rss']:>7.0f} {r['anon']:>7.0f} "
                  f"{r['wbin']:>14,d} {r['wbin'] / 2**30:>6.3f} {f(r['bpw']):>6} {f(r['bpcw']):>6} "
                  f"{str(r['n']) + '/' + str(r['weights']):>9} {f(r['snr']):>6} "
                  f"{r['cparams'] / r['wall'] / 1e6:>8.2f} {f(est, '{:.0f}'):>8} {f(measured, '{:.0f}'):>8} "
                  f"{f(ratio(measured if measured is not None else est, r['wall']), '{:.1f}x'):>6}  {chk}")
        if g:
            try:
                size = int(open(os.path.join(tmp, f"gen.{arch}.bytes")).read())
            except OSError:
                size = 0
            params = next((l.split(":")[1].strip() for l in (text(f"gen.{arch}", "stdout") or "").splitlines()
                           if l.startswith("total parameters")), "?")
            print(f"{arch:<6} (input: {params} parameters, package {size / 1e9:.3f} GB, generated in {g['wall']:.0f} s)")
    print("   rss = peak RSS (/usr/bin/time; counts mapped input pages); anon = largest RssAnon sampled every 0.1 s;")
    print("   bits/w = weight.bin bits per parameter (all weights); b/cw = per compressed weight; Mparam/s = compressed params / wall")
PYEOF
