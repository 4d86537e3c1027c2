#!/usr/bin/env bash
# scripts/test.sh - the one command that runs the whole sdcompress test suite.
#
# Needs: Rust (stable, with rustfmt and clippy) and python3 (3.11) with the venv module.
# Creates .venv in the repository (if missing) with the pinned packages from
# scripts/requirements-interop.txt (coremltools 9.0 + numpy + safetensors), so that the interop
# tests (tests/interop.rs + tests/interop/*.py) run against coremltools instead of skipping.
# Then: cargo fmt --check, clippy -D warnings (all targets, so benches and examples must build),
# cargo test (library, binary, integration tests; benchmarks stay out), the fuzz crate's build
# (if fuzz/ exists), and - if ../shared/oracle/verify.py exists next to the repository - an
# end-to-end oracle check of the CLI. Safe to run again; a second run skips the installs.
#
# Environment: SDCOMPRESS_SKIP_PIP=1 trusts an existing .venv as it is (offline use).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

# A test build needs about 2 GB (target/ 1.6 GB, .venv 0.4 GB): say what there is, so that a
# run that fills the disk is recognised as such.
step "disk space (needs about 2 GB)"
df -h "$repo" "${TMPDIR:-/tmp}" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Python venv for the interop tests
# ---------------------------------------------------------------------------------------------
venv="$repo/.venv"
py="$venv/bin/python"
req="$repo/scripts/requirements-interop.txt"

if [ ! -x "$py" ] || ! "$py" -c 'import sys' >/dev/null 2>&1; then
    step "creating Python venv $venv"
    if ! python3 -m venv --clear "$venv"; then
        echo "error: 'python3 -m venv' failed; on Debian install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
fi

stamp="$venv/.sdcompress-requirements"
want="$(sha256sum "$req" | cut -d' ' -f1) $("$py" -c 'import sys; print(sys.version.split()[0])')"
if [ "${SDCOMPRESS_SKIP_PIP:-0}" = 1 ]; then
    step "Python venv: SDCOMPRESS_SKIP_PIP=1, using $venv as it is"
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$py" -c 'import coremltools, numpy, safetensors' >/dev/null 2>&1; then
    step "Python venv up to date ($venv)"
else
    step "installing pinned Python packages into $venv (scripts/requirements-interop.txt)"
    "$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
    printf '%s\n' "$want" >"$stamp"
fi
"$py" - <<'PYEOF' 2>/dev/null || { echo "error: coremltools is not importable with $py" >&2; exit 1; }
import sys, coremltools, numpy
print(f"python {sys.version.split()[0]}, coremltools {coremltools.__version__}, numpy {numpy.__version__}")
PYEOF

export SDCOMPRESS_PYTHON="$py"
export SDCOMPRESS_REQUIRE_INTEROP=1
export PYTHONDONTWRITEBYTECODE=1
export TQDM_DISABLE=1
# A one-shot test build gains nothing from incremental compilation, whose caches took about 3 GB
# of the target directory (a CI machine's disk can be small). A developer may set it back to 1.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

oracle=""
if [ -f "$repo/../shared/oracle/verify.py" ]; then
    oracle="$(cd "$repo/../shared/oracle" && pwd)/verify.py"
    export SDCOMPRESS_ORACLE="$oracle"
    export SDCOMPRESS_REQUIRE_ORACLE=1
fi

# ---------------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------------
step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --lib --bins --tests"
test_log="$(mktemp "${TMPDIR:-/tmp}/sdcompress-test.XXXXXX")"
cargo test --lib --bins --tests 2>&1 | tee "$test_log"
# Sum the per-binary results into one closing line (printed at the end).
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$test_log")
rm -f "$test_log"

if [ -f "$repo/fuzz/Cargo.toml" ]; then
    # cargo-fuzz needs nightly to *run* the targets; building them must work on stable.
    step "cargo build --manifest-path fuzz/Cargo.toml (stable build of the fuzz targets)"
    # Same target directory and dev profile as the main build, so the heavy dependencies
    # (candle, faer) compiled for the tests are reused instead of built a second time.
    CARGO_TARGET_DIR="$repo/target" cargo build --manifest-path fuzz/Cargo.toml
else
    step "fuzz: skipped (no fuzz/Cargo.toml)"
fi

# ---------------------------------------------------------------------------------------------
# Shared oracle: end to end through the CLI, with model outputs from verify.py's interpreter
# ---------------------------------------------------------------------------------------------
if [ -z "$oracle" ]; then
    step "oracle: skipped: ../shared not present"
else
    step "oracle: sdcompress decompress + $oracle --calib (outputs must equal the input program's)"
    bin="${CARGO_TARGET_DIR:-$repo/target}/debug/sdcompress"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/sdcompress-oracle.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    # fixture : calibration file : samples
    for item in \
        tiny-sd-unet.p4-tensor:calib-tiny-sd:2 \
        tiny-sd-unet-ios18.prune0.4-p4-gs16:calib-tiny-sd:2 \
        tiny-sdxl-unet:calib-tiny-sdxl:1 \
        mlsd-unet-ios16:calib-mlsd-unet:1; do
        IFS=: read -r name calib samples <<<"$item"
        in="$repo/fixtures/$name.mlpackage"
        out="$tmp/$name.mlpackage"
        "$bin" decompress "$in" -o "$out" --quiet
        rc=0
        "$py" -B "$oracle" "$out" --reference "$in" --calib "$repo/fixtures/$calib.safetensors" \
            --samples "$samples" --json >"$tmp/$name.json" 2>"$tmp/$name.err" || rc=$?
        if ! "$py" -B "$repo/tests/interop/check_verify_report.py" "decompress $name (verify.py exit $rc)" \
            "$tmp/$name.json"; then
            tail -n 20 "$tmp/$name.err" >&2 || true
            exit 1
        fi
    done
fi

step "all checks passed"
du -sh "${CARGO_TARGET_DIR:-$repo/target}" 2>/dev/null | sed 's/\t/ /; s/^/target directory: /' || true
echo "${passed} passed, ${failed} failed"
