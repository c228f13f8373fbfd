"""Scanned against unrolled (issue 14): structured derivatives through lax.scan.

Cases, each measured in one process with the methods' runs interleaved (best of --repeats):

* ``stack``: 784 -> 4 x 512 tanh residual layers -> 10, N=32, O=10, the layers scanned over
  stacked weights against the same layers unrolled in Python (structured; target: scanned within
  1.2x of unrolled), plus compile seconds (cutting compile time is why people scan);
* ``vit``: the suite's ViT with its blocks scanned against unrolled;
* ``lstm`` / ``gru``: Flax recurrent cells over 8 steps, structured and auto against jacobian;
* ``long``: 784 -> 64 x 256 tanh residual layers -> 10, longer than the loops ntkc unrolls
  (``ntkc.passes.unroll.MAX_LENGTH``): the scan stays rolled with its uses hoisted out
  (``ntkc.passes.rolled``). Scanned against unrolled (structured; the unrolled program's compile
  is the long one), structured against jacobian on the scanned stack, and the scanned stack's
  compile and run seconds at 40, 80 and 160 layers (flat compile time is why people scan).

Both kernels are checked to agree. ``trace_axes=(-1,)``, ``vmap_axes=0``, x2=None and a distinct
x2 (a cross kernel).

    python -m bench.scan [--cases stack,lstm,long] [--repeats 3] [--n 32]
"""

from __future__ import annotations

import argparse
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import ntkc


def _stack(depth=4, width=512, inputs=784, outputs=10, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w_in": rng.standard_normal((inputs, width), np.float32) / np.sqrt(inputs),
              "w": rng.standard_normal((depth, width, width), np.float32) / np.sqrt(width),
              "v": rng.standard_normal((width, outputs), np.float32) / np.sqrt(width)}

    def scanned(p, x):
        h, _ = lax.scan(lambda h, w: (h + jnp.tanh(h @ w), None), x @ p["w_in"], p["w"])
        return h @ p["v"]

    def unrolled(p, x):
        h = x @ p["w_in"]
        for i in range(depth):
            h = h + jnp.tanh(h @ p["w"][i])
        return h @ p["v"]

    return scanned, unrolled, params, inputs


class _Block(nn.Module):
    dim: int = 64

    @nn.compact
    def __call__(self, h, _):
        y = nn.LayerNorm()(h)
        q, k, v = (nn.Dense(self.dim)(y) for _ in range(3))
        a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / np.sqrt(self.dim), -1)
        h = h + nn.Dense(self.dim)(a @ v)
        return h + nn.Dense(self.dim)(jax.nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(h)))), None


class _ViT(nn.Module):
    layers: int = 4

    @nn.compact
    def __call__(self, x):  # (N, tokens, 48) patches
        h = nn.Dense(64, name="embed")(x)
        h, _ = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.layers)(name="blocks")(h, None)
        return nn.Dense(10, name="head")(h.mean(-2))


def _vit_unrolled(scanned_params, layers=4):
    """The same ViT with one params leaf per block (the stacked weights split), unrolled."""
    params = {"embed": scanned_params["embed"], "head": scanned_params["head"],
              **{f"block{i}": jax.tree.map(lambda a, i=i: a[i], scanned_params["blocks"])
                 for i in range(layers)}}

    def f(p, x):
        h = nn.Dense(64).apply({"params": p["embed"]}, x)
        for i in range(layers):
            h, _ = _Block().apply({"params": p[f"block{i}"]}, h, None)
        return nn.Dense(10).apply({"params": p["head"]}, h.mean(-2))

    return f, params


def _recurrent(cell):
    model = nn.Sequential([nn.RNN(cell(features=128)), lambda h: h[:, -1], nn.Dense(10)])
    return model


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def _first(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def run_pair(name, fa, fb, params_a, params_b, x1, x2, methods, repeats, labels):
    rows = []
    for symmetric in (True, False):
        xb = None if symmetric else x2
        for method in methods:
            ka = ntkc.ntk_fn(fa, vmap_axes=0, method=method)
            kb = ntkc.ntk_fn(fb, vmap_axes=0, method=method)
            out_a, first_a = _first(lambda: ka(x1, xb, params_a))
            out_b, first_b = _first(lambda: kb(x1, xb, params_b))
            ta = tb = float("inf")
            for _ in range(repeats):  # interleaved
                ta = min(ta, _time(lambda: ka(x1, xb, params_a), 1))
                tb = min(tb, _time(lambda: kb(x1, xb, params_b), 1))
            err = float(np.abs(np.asarray(out_a) - np.asarray(out_b)).max()
                        / max(np.abs(np.asarray(out_b)).max(), 1e-30))
            rows.append((name, "x2=None" if symmetric else "cross", method, ta, tb, ta / tb,
                         first_a - ta, first_b - tb, err))
    print(f"| case | kernel | method | {labels[0]} (s) | {labels[1]} (s) | ratio | "
          f"{labels[0]} compile+trace (s) | {labels[1]} compile+trace (s) | rel. difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.2f} | {r[6]:.1f} | "
              f"{r[7]:.1f} | {r[8]:.1e} |")
    return rows


def run_methods(name, f, params, x1, x2, methods, repeats):
    """The methods on one function, interleaved; times relative to jacobian's."""
    print("| case | kernel | " + " | ".join(f"{m} (s)" for m in methods)
          + " | " + " | ".join(f"{m} / jacobian" for m in methods if m != "jacobian") + " |")
    print("|---|---|" + "---|" * (2 * len(methods) - 1))
    for symmetric in (True, False):
        xb = None if symmetric else x2
        fns = {m: ntkc.ntk_fn(f, vmap_axes=0, method=m) for m in methods}
        outs = {m: _first(lambda m=m: fns[m](x1, xb, params))[0] for m in methods}
        for m in methods:
            np.testing.assert_allclose(outs[m], outs["jacobian"], rtol=2e-3, atol=2e-3)
        best = {m: float("inf") for m in methods}
        for _ in range(repeats):
            for m in methods:
                best[m] = min(best[m], _time(lambda m=m: fns[m](x1, xb, params), 1))
        print(f"| {name} | {'x2=None' if symmetric else 'cross'} | "
              + " | ".join(f"{best[m]:.3f}" for m in methods) + " | "
              + " | ".join(f"{best[m] / best['jacobian']:.2f}" for m in methods if m != "jacobian")
              + " |")


def run_lengths(depths, width, x, repeats):
    """The scanned stack's first call (trace + compile + run) and best run, per depth."""
    print("| layers | compile+trace (s) | run (s) |")
    print("|---|---|---|")
    for depth in depths:
        scanned, _, params, _ = _stack(depth=depth, width=width)
        kfn = ntkc.ntk_fn(scanned, vmap_axes=0, method="structured")
        first = _first(lambda: kfn(x, None, params))[1]
        best = _time(lambda: kfn(x, None, params), repeats)
        print(f"| {depth} | {first - best:.1f} | {best:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scan", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="stack,vit,lstm,gru,long",
                    help="comma-separated cases: stack, vit, lstm, gru, long (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per kernel (best kept)")
    ap.add_argument("--n", type=int, default=32,
                    help="examples of the stack and long cases (default: 32)")
    ap.add_argument("--n-jacobian", type=int, default=8,
                    help="examples of the long case's structured against jacobian (default: 8; "
                         "the per-example Jacobians take 1.4 GB per side at 8, 5.6 GB at 32)")
    args = ap.parse_args(argv)
    print(f"ntkc {ntkc.__version__}, JAX {jax.__version__}, {platform.machine()}, "
          f"{jax.devices()[0].device_kind}; trace_axes=(-1,), vmap_axes=0")
    rng = np.random.default_rng(1)
    for case in args.cases.split(","):
        if case == "stack":
            scanned, unrolled, params, inputs = _stack()
            x1 = rng.standard_normal((args.n, inputs), np.float32)
            x2 = rng.standard_normal((args.n - 1, inputs), np.float32)
            run_pair("stack 784-4x512-10", scanned, unrolled, params, params, x1, x2,
                     ["structured"], args.repeats, ("scanned", "unrolled"))
        elif case == "vit":
            x1 = rng.standard_normal((8, 16, 48), np.float32)
            x2 = rng.standard_normal((7, 16, 48), np.float32)
            scanned = _ViT()
            ps = scanned.init(jax.random.PRNGKey(0), x1)["params"]
            unrolled, pu = _vit_unrolled(ps)
            run_pair("ViT 4 blocks", lambda p, x: scanned.apply({"params": p}, x), unrolled,
                     ps, pu, x1, x2, ["structured", "auto"], args.repeats,
                     ("scanned", "unrolled"))
        elif case in ("lstm", "gru"):
            model = _recurrent(nn.LSTMCell if case == "lstm" else nn.GRUCell)
            x1 = rng.standard_normal((16, 8, 32), np.float32)
            x2 = rng.standard_normal((15, 8, 32), np.float32)
            params = model.init(jax.random.PRNGKey(0), x1)["params"]
            f = lambda p, x, model=model: model.apply({"params": p}, x)
            run_methods(f"{case} 8 steps x 128", f, params, x1, x2,
                        ["structured", "auto", "jacobian"], args.repeats)
        elif case == "long":
            scanned, unrolled, params, inputs = _stack(depth=64, width=256)
            x1 = rng.standard_normal((args.n, inputs), np.float32)
            x2 = rng.standard_normal((args.n - 1, inputs), np.float32)
            run_pair("stack 784-64x256-10", scanned, unrolled, params, params, x1, x2,
                     ["structured"], args.repeats, ("scanned", "unrolled"))
            n = args.n_jacobian  # jacobian holds N * O * 4.3M weights per side
            run_methods(f"scanned 784-64x256-10, N={n}", scanned, params, x1[:n], x2[:n - 1],
                        ["structured", "jacobian"], args.repeats)
            run_lengths((40, 80, 160), 256, x1, args.repeats)
        else:
            raise SystemExit(f"unknown case {case!r}; valid: stack, vit, lstm, gru, long")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
