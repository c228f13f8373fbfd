"""The finite-width toolkit on benchmark models: condition numbers, spectra and the pNTK.

``python -m bench.toolkit [--parts tenas,eig,pntk] [--n 2048] [--channels 64] [--n-tenas 64]
[--n-pntk 64] [--json PATH]``

- ``tenas``: the TE-NAS score (Chen, Gong, Wang, ICLR 2021) of a small ResNet cell (stem conv,
  one residual block of two 3x3 convs, global average pooling, dense; CIFAR-shaped inputs):
  the condition number of its NTK over ``--n-tenas`` inputs, materialised. Both the traced NTK
  and the pNTK (TE-NAS differentiates the sum of the logits per example: the pNTK up to a
  factor O, which the condition number does not see).
- ``eig``: the 10 largest eigenvalues of the traced NTK of ``bench.models.cnn`` over ``--n``
  inputs, matrix-free (ARPACK on ``ntkc.ntk_vp_fn``, Θ never built); checked against the
  materialised kernel's ``eigvalsh`` when ``--check-n`` inputs allow it.
- ``pntk``: ``ntkc.pseudo_ntk_fn`` against the traced NTK (``trace_axes=(-1,)``) on the bench
  CNN over ``--n-pntk`` inputs: time (compile separately) and relative Frobenius error.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import ntkc
from bench.models import NHWC, cnn


def resnet_cell(n=64, width=16, outputs=10, image=32, seed=0):
    """Stem conv 3x3 (width), one residual block (two conv 3x3 + ReLU, identity skip), GAP,
    dense: a small ResNet cell of the kind TE-NAS scores."""
    rng = np.random.default_rng(seed)
    conv_init = lambda k, cin, cout: jnp.asarray(
        rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    params = {"stem": conv_init(3, 3, width), "c1": conv_init(3, width, width),
              "c2": conv_init(3, width, width),
              "head": jnp.asarray(rng.standard_normal((width, outputs)) / np.sqrt(width), jnp.float32)}
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)

    def f(p, x):
        x = jax.nn.relu(conv(x, p["stem"]))
        h = conv(jax.nn.relu(conv(x, p["c1"])), p["c2"])
        return jax.nn.relu(x + h).mean((1, 2)) @ p["head"]

    x = jnp.asarray(rng.standard_normal((n, image, image, 3)), jnp.float32)
    return f, params, x


def timed(fn, *args, repeats=2):
    """(first call seconds (compile + run), best of ``repeats`` later calls, result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def part_tenas(args) -> dict:
    f, params, x = resnet_cell(n=args.n_tenas)
    t0 = time.perf_counter()
    traced = ntkc.condition_number(f, x, params, vmap_axes=0)
    t_traced = time.perf_counter() - t0
    t0 = time.perf_counter()
    theta = ntkc.pseudo_ntk_fn(f, vmap_axes=0)(x, None, params)
    vals = np.linalg.eigvalsh(np.asarray(theta, np.float64))
    t_pntk = time.perf_counter() - t0
    row = {"part": "tenas", "model": "resnet_cell(width=16)", "n": args.n_tenas,
           "cond_traced_ntk": traced, "cond_pntk": float(vals[-1] / vals[0]),
           "seconds_traced": t_traced, "seconds_pntk": t_pntk}
    print(f"TE-NAS  resnet cell, N={args.n_tenas}: cond(traced NTK) = {traced:.4g} "
          f"({t_traced:.1f} s), cond(pNTK) = {row['cond_pntk']:.4g} ({t_pntk:.1f} s)")
    return row


def part_eig(args) -> dict:
    f, params, x = cnn(n=args.n, channels=args.channels)
    t0 = time.perf_counter()
    top = ntkc.ntk_eigenvalues(f, x, params, k=10, matrix_free=True, tol=args.tol)
    seconds = time.perf_counter() - t0
    row = {"part": "eig", "model": f"cnn(channels={args.channels})", "n": args.n, "k": 10,
           "tol": args.tol, "top": top.tolist(), "seconds": seconds}
    print(f"top-10  cnn({args.channels} ch), N={args.n}, matrix-free: {seconds:.1f} s\n   "
          + " ".join(f"{v:.5g}" for v in top))
    if args.check_n:
        xs = x[: args.check_n]
        free = ntkc.ntk_eigenvalues(f, xs, params, k=10, matrix_free=True, tol=args.tol)
        dense = ntkc.ntk_eigenvalues(f, xs, params, k=10, matrix_free=False, vmap_axes=0)
        row["check"] = {"n": args.check_n, "max_rel_diff": float(np.max(np.abs(free - dense) / dense))}
        print(f"   check at N={args.check_n}: matrix-free vs materialised eigvalsh, max rel diff "
              f"{row['check']['max_rel_diff']:.2e}")
    return row


def part_pntk(args) -> dict:
    f, params, x = cnn(n=args.n_pntk, channels=args.channels)
    ntk = ntkc.ntk_fn(f, vmap_axes=0)
    pntk = ntkc.pseudo_ntk_fn(f, vmap_axes=0)
    c_ntk, t_ntk, k_ntk = timed(lambda: ntk(x, None, params))
    c_pntk, t_pntk, k_pntk = timed(lambda: pntk(x, None, params))
    k_ntk, k_pntk = np.asarray(k_ntk, np.float64), np.asarray(k_pntk, np.float64)
    err = float(np.linalg.norm(k_pntk - k_ntk) / np.linalg.norm(k_ntk))
    row = {"part": "pntk", "model": f"cnn(channels={args.channels})", "n": args.n_pntk,
           "ntk_first_s": c_ntk, "ntk_s": t_ntk, "pntk_first_s": c_pntk, "pntk_s": t_pntk,
           "rel_frobenius_error": err}
    print(f"pNTK    cnn({args.channels} ch), N={args.n_pntk}: traced NTK {t_ntk:.2f} s "
          f"(first call {c_ntk:.1f} s), pNTK {t_pntk:.2f} s (first call {c_pntk:.1f} s), "
          f"relative Frobenius error {err:.3g}")
    return row


PARTS = {"tenas": part_tenas, "eig": part_eig, "pntk": part_pntk}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.toolkit", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="tenas,eig,pntk")
    parser.add_argument("--n", type=int, default=2048, help="inputs for the top-10 eigenvalues")
    parser.add_argument("--channels", type=int, default=64, help="the bench CNN's channels")
    parser.add_argument("--tol", type=float, default=1e-4, help="ARPACK's relative tolerance")
    parser.add_argument("--check-n", type=int, default=0,
                        help="also compare with the materialised kernel on this many inputs")
    parser.add_argument("--n-tenas", type=int, default=64)
    parser.add_argument("--n-pntk", type=int, default=64)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    print(f"JAX {jax.__version__}, {platform.machine()}, {jax.devices()[0].platform}")
    rows = [PARTS[p](args) for p in parts]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jax": jax.__version__, "machine": platform.machine(), "rows": rows}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
