"""A switch with parameters in its branches against the same model with the taken branch
written out (issue 14, item 3): structured derivatives through a flattened ``lax.switch``
(``ntkc.passes.conds``).

784 -> 512 -> ``lax.switch(mode, [tanh, relu, sin](h @ W_k))`` -> 10, N=32, O=10, float32,
``vmap_axes=0``, the branch index a keyword argument (a traced scalar). The two kernels are
checked to agree, then timed interleaved (best of --repeats per round), x2=None and a distinct x2.

    python -m bench.cond [--rounds 3] [--repeats 5] [--n 32]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import ntkc
from bench.paper import _best_seconds

ACTIVATIONS = (jnp.tanh, jax.nn.relu, jnp.sin)


def switched(p, x, mode):
    h = x @ p["w_in"]
    h = lax.switch(mode, [lambda h, k=k: ACTIVATIONS[k](h @ p["w"][k]) for k in range(3)], h)
    return h @ p["v"]


def written_out(p, x, mode):  # mode a Python int: the taken branch only
    h = x @ p["w_in"]
    return ACTIVATIONS[mode](h @ p["w"][mode]) @ p["v"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    params = {"w_in": rng.standard_normal((784, 512), np.float32) / 28,
              "w": [rng.standard_normal((512, 512), np.float32) / 22.6 for _ in range(3)],
              "v": rng.standard_normal((512, 10), np.float32) / 22.6}
    x1 = rng.standard_normal((args.n, 784), np.float32)
    x2 = rng.standard_normal((args.n, 784), np.float32)
    kernels = {name: ntkc.ntk_fn(f, vmap_axes=0, method="structured", strict=True)
               for name, f in (("switch", switched), ("written out", written_out))}
    mode = {"switch": jnp.int32(1), "written out": 1}
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for label, second in (("x2=None", None), ("x2 given", x2)):
        got = {k: kernels[k](x1, second, params, mode=mode[k]) for k in kernels}
        scale = float(jnp.abs(got["written out"]).max())
        assert float(jnp.abs(got["switch"] - got["written out"]).max()) <= 1e-4 * scale
        for r in range(args.rounds):
            t = {k: _best_seconds(lambda k=k: kernels[k](x1, second, params, mode=mode[k]),
                                  args.repeats)
                 for k in kernels}
            print(f"{label} round {r}: switch {t['switch'] * 1e3:.1f} ms, written out "
                  f"{t['written out'] * 1e3:.1f} ms, ratio {t['switch'] / t['written out']:.2f} "
                  f"(load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
