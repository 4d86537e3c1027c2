#!/usr/bin/env bash
# End-to-end SparseGPT prune of a UNet package against magnitude pruning, in
# one run: wall time, CPU seconds and peak RSS (/usr/bin/time -v) of each,
# and the output PSNR of both against the dense model (`sdcompress eval`).
#
#   scripts/bench_sparsegpt_unet.sh MODEL.mlpackage CALIB.safetensors [EVAL.safetensors] [PRUNE FLAGS...]
#
# EVAL defaults to CALIB (in-sample). Default flags: --sparsity 0.4.
# Example (an SD-1.5-sized UNet converted with 32x32 latents and a few
# recorded samples, see README "Calibration data"):
#   scripts/bench_sparsegpt_unet.sh sd15.mlpackage calib.safetensors
set -euo pipefail
model=$1; calib=$2; evalset=${3:-$2}; shift $(( $# >= 3 ? 3 : 2 ))
flags=("$@"); [ ${#flags[@]} -eq 0 ] && flags=(--sparsity 0.4)
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/sdcompress"
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-sgpt.XXXXXX"); trap 'rm -rf "$work"' EXIT
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" 2>"$work/$name.time" >/dev/null || { cat "$work/$name.time"; exit 1; }
  local wall cpu_u cpu_s rss
  wall=$(grep "Elapsed (wall" "$work/$name.time" | awk '{print $NF}')
  cpu_u=$(grep "User time" "$work/$name.time" | awk '{print $NF}')
  cpu_s=$(grep "System time" "$work/$name.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident" "$work/$name.time" | awk '{print $NF}')
  printf '%-10s wall %8s  cpu %8.1f s  peak RSS %7.0f MB\n' "$name" "$wall" "$(echo "$cpu_u + $cpu_s" | bc)" "$(echo "$rss / 1024" | bc)"
}
psnr() { "$bin" eval "$model" "$1" --inputs "$evalset" --json -q |
  python3 -c 'import json,sys; v=json.load(sys.stdin); print("%.2f" % v["outputs"][0]["mean"]["psnr_db"])'; }
echo "model $model, calibration $calib ($(basename "$evalset") for eval), flags ${flags[*]}, $(nproc) cores"
measure magnitude "$bin" prune "$model" -o "$work/mag.mlpackage" -q "${flags[@]}"
measure sparsegpt "$bin" prune "$model" -o "$work/sgpt.mlpackage" -q "${flags[@]}" \
  --method sparsegpt --calibration "$calib" --report "$work/sgpt.json"
python3 - "$work/sgpt.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["options"]["sparsegpt"]
print("sparsegpt: %d samples, %d stages, %d passes, calibration+pruning %.1f s"
      % (s["samples"], len(s["stages"]), sum(x["passes"] for x in s["stages"]), s["calibration_seconds"]))
PY
echo "PSNR vs dense: magnitude $(psnr "$work/mag.mlpackage") dB, sparsegpt $(psnr "$work/sgpt.mlpackage") dB"
