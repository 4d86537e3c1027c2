#!/usr/bin/env python3
"""check_pruned.py BASE.npz PRUNED.npz (--sparsity F [--block B DIM] | --nm N M)

Both files come from ct_weights.py (coremltools' reading of the packages; PRUNED with
--decompress). For every weight that sdcompress prunes (float, rank >= 2, more than 2048
elements) it checks that the values coremltools decodes are the base values with exactly
round(F * numel) zeros (--sparsity), or exactly N zeros in every run of M along axis 1 (--nm),
that the zeroed weights are the smallest by magnitude. With --block B DIM: whole blocks of B
consecutive elements along axis DIM are zeroed (the last block of an axis may be shorter),
exactly round(F * blocks) of them, none with a larger L2 norm than a kept block. Prints one
summary line ("N pruned weights checked, all exact (M left dense)"; a weight identical to the
base counts as left dense); exit 1 on any failure.
"""
import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("pruned")
    ap.add_argument("--sparsity", type=float)
    ap.add_argument("--nm", type=int, nargs=2)
    ap.add_argument("--block", type=int, nargs=2)
    a = ap.parse_args()
    base = np.load(a.base)
    ours = np.load(a.pruned)
    bad, pruned_weights, dense = [], 0, 0
    for key in base.files:
        if key == "__meta__":
            continue
        if key not in ours.files:
            bad.append(f"{key}: missing")
            continue
        b, o = base[key], ours[key]
        if b.dtype != o.dtype or b.shape != o.shape:
            bad.append(f"{key}: {b.dtype}{b.shape} vs {o.dtype}{o.shape}")
            continue
        is_weight = b.dtype.kind == "f" and b.ndim >= 2 and b.size > 2048
        if not is_weight:
            # decompress_weights re-runs coremltools' pass pipeline, which
            # rewrites some small consts (transpose perms) on its own; the
            # other interop tests cover the untouched structure.
            continue
        zero = o == 0
        if np.array_equal(o, b):
            # Left dense (the report says why); the caller checks how many
            # were pruned.
            dense += 1
            continue
        pruned_weights += 1
        if not np.array_equal(o[~zero], b[~zero]):
            bad.append(f"{key}: kept values differ from the base")
        mags = np.abs(b.astype(np.float64))
        if a.block is not None:
            bs, dim = a.block
            z = np.moveaxis(zero, dim, 0)
            x = np.moveaxis(b.astype(np.float64), dim, 0)
            same = np.moveaxis(o == b, dim, 0)
            n = z.shape[0]
            pruned_n, blocks, pn, kn = 0, 0, [], []
            for start in range(0, n, bs):
                zb = z[start:start + bs]
                norm = np.sqrt(np.sum(x[start:start + bs] ** 2, axis=0))
                whole = zb.all(axis=0)
                # A kept block keeps every value (zeros only where the base has them).
                if not np.all(same[start:start + bs][:, ~whole]):
                    bad.append(f"{key}: a block is pruned in part")
                blocks += whole.size
                pruned_n += int(whole.sum())
                pn.extend(norm[whole].ravel().tolist())
                kn.extend(norm[~whole].ravel().tolist())
            want = int(np.floor(a.sparsity * blocks + 0.5))
            if pruned_n != want:
                bad.append(f"{key}: {pruned_n} pruned blocks of {blocks}, expected {want}")
            if pn and kn and max(pn) > min(kn):
                bad.append(f"{key}: a pruned block has a larger norm than a kept one")
        elif a.sparsity is not None:
            want = max(int(np.floor(a.sparsity * b.size + 0.5)), int((b == 0).sum()))
            if int(zero.sum()) != want:
                bad.append(f"{key}: {int(zero.sum())} zeros, expected {want}")
            if zero.any() and (~zero).any() and mags[zero].max() > mags[~zero].min():
                bad.append(f"{key}: a pruned weight is larger than a kept one")
        else:
            n, m = a.nm
            z = np.moveaxis(zero, 1, -1)
            mg = np.moveaxis(mags, 1, -1)
            runs_z = z.reshape(-1, m)
            runs_m = mg.reshape(-1, m)
            counts = runs_z.sum(axis=1)
            base_zero = (runs_m == 0).sum(axis=1)
            if not np.all(counts == np.maximum(n, base_zero)):
                bad.append(f"{key}: runs with a zero count other than {n}")
            pr = np.where(runs_z, runs_m, -np.inf).max(axis=1)
            kp = np.where(~runs_z, runs_m, np.inf).min(axis=1)
            if np.any(pr > kp):
                bad.append(f"{key}: a pruned weight is larger than a kept one in its run")
    if bad:
        for x in bad[:20]:
            print("FAIL", x)
        return 1
    print(f"{pruned_weights} pruned weights checked, all exact ({dense} left dense)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
