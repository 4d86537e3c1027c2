#!/usr/bin/env python3
"""make_bert_like.py - write a BERT-family encoder .mlpackage with all-MiniLM-L6-v2's shapes.

    python scripts/make_bert_like.py OUT.mlpackage [--layers 6] [--vocab 30522] [--hidden 384]
        [--ffn 1536] [--seed 0] [--target ios17|ios18]

A word-embedding table [vocab, hidden] read by gather, and per layer the q/k/v/o linears
[hidden, hidden] and the two FFN linears [ffn, hidden], [hidden, ffn] with biases and
layer norms; fp16 weights drawn from N(0, 0.05) with a seeded numpy generator. The numbers are
random (no trained weights needed): the test is about which weights get compressed and the
sizes, and 30522 = 2 x 3 x 5087 is not a multiple of 16 (its largest divisor <= 16 is 6).
Built with coremltools' MIL builder (no torch). EXIT CODE 0 written, 2 error.
"""
import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", choices=["ios17", "ios18"], default="ios18")
    a = ap.parse_args()

    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(a.seed)
    H, F = a.hidden, a.ffn

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    target = ct.target.iOS18 if a.target == "ios18" else ct.target.iOS17

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, a.seq), dtype=types.int32)],
        opset_version=target,
    )
    def prog(ids):
        x = mb.gather(x=w(a.vocab, H), indices=ids, axis=0, name="embeddings")
        for i in range(a.layers):
            p = f"layer{i}_"
            q = mb.linear(x=x, weight=w(H, H), bias=w(H), name=p + "q")
            k = mb.linear(x=x, weight=w(H, H), bias=w(H), name=p + "k")
            v = mb.linear(x=x, weight=w(H, H), bias=w(H), name=p + "v")
            att = mb.matmul(x=q, y=k, transpose_y=True, name=p + "qk")
            att = mb.softmax(x=att, axis=-1, name=p + "softmax")
            ctx = mb.matmul(x=att, y=v, name=p + "ctx")
            o = mb.linear(x=ctx, weight=w(H, H), bias=w(H), name=p + "o")
            x = mb.add(x=x, y=o, name=p + "res1")
            x = mb.layer_norm(x=x, axes=[-1], gamma=w(H), beta=w(H), name=p + "ln1")
            h = mb.linear(x=x, weight=w(F, H), bias=w(F), name=p + "ffn1")
            h = mb.gelu(x=h, name=p + "gelu")
            h = mb.linear(x=h, weight=w(H, F), bias=w(H), name=p + "ffn2")
            x = mb.add(x=x, y=h, name=p + "res2")
            x = mb.layer_norm(x=x, axes=[-1], gamma=w(H), beta=w(H), name=p + "ln2")
        return x

    m = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,
    )
    m.save(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
