#!/usr/bin/env bash
# fuzz/seed.sh - fill fuzz/corpus/<target>/ with seed inputs taken from the
# shipped fixtures (fixtures/*.mlpackage), plus every committed regression
# input (fuzz/regressions/<target>/*).
#
#   blob_reader: each weight.bin cut down to its first 1, 2, 3 and 8 blobs
#                (header count patched to match), so that seeds stay small;
#                libFuzzer caps inputs at 1 MiB and the full files are 2 MiB.
#   manifest:    each Manifest.json.
#   program:     slices of each model.mlmodel written by
#                `cargo run --example trim_seeds` (fuzz/examples/trim_seeds.rs):
#                the first 40 ops, the first constexpr chains, and the smallest
#                chain with its blobs inlined (the target runs without weight
#                files); the full ~250 KB programs would make the fuzzer crawl.
#
# Needs python3 (standard library only) and a stable cargo. Safe to run again: files are named
# by content, so re-running adds nothing new.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
corpus="$here/corpus"
mkdir -p "$corpus/blob_reader" "$corpus/manifest" "$corpus/program"

python3 - "$repo/fixtures" "$corpus" <<'PYEOF'
import hashlib, os, struct, sys

fixtures, corpus = sys.argv[1], sys.argv[2]

def put(target, data):
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(corpus, target, name), "wb") as f:
        f.write(data)

def align64(x):
    return (x + 63) & ~63

n = 0
for pkg in sorted(os.listdir(fixtures)):
    if not pkg.endswith(".mlpackage"):
        continue
    root = os.path.join(fixtures, pkg)
    with open(os.path.join(root, "Manifest.json"), "rb") as f:
        put("manifest", f.read())
    with open(os.path.join(root, "Data/com.apple.CoreML/weights/weight.bin"), "rb") as f:
        wb = f.read()
    count = struct.unpack_from("<I", wb, 0)[0]
    for keep in (1, 2, 3, 8):
        if keep > count:
            break
        at = 64
        end = 64
        for _ in range(keep):
            size, data_off = struct.unpack_from("<QQ", wb, at + 8)
            end = data_off + size
            at = align64(end)
        cut = bytearray(wb[:end])
        struct.pack_into("<I", cut, 0, keep)
        put("blob_reader", bytes(cut))
    n += 1
print(f"seeded from {n} fixtures")
PYEOF

cargo run -q --manifest-path "$here/Cargo.toml" --example trim_seeds -- \
    "$repo/fixtures" "$corpus/program"

# A header-only storage file and an empty manifest object, as small seeds.
python3 -c 'import sys; sys.stdout.buffer.write((0).to_bytes(4,"little")+(2).to_bytes(4,"little")+bytes(56))' \
    >"$corpus/blob_reader/empty-storage"
printf '{}' >"$corpus/manifest/empty-object"

for t in blob_reader manifest program; do
    if [ -d "$here/regressions/$t" ]; then
        cp "$here/regressions/$t"/* "$corpus/$t/" 2>/dev/null || true
    fi
    printf '%-12s %4d files, %8d bytes\n' "$t" "$(ls "$corpus/$t" | wc -l)" "$(cat "$corpus/$t"/* | wc -c)"
done
