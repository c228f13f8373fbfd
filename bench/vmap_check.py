"""What checking vmap_axes' certificate costs (issue 15): the independence pass on each benchmark
model, against the trace of f it walks and the kernel call it guards.

For each model of the suite (its default sizes), in one process:

* ``check``: ``ntkc._args.check_independent_examples`` given f's jaxpr, as the argument checks run
  it (the walk of the table of example axes; no probe is needed on these models);
* ``trace f``: ``jax.make_jaxpr`` of f over the batch, which the argument checks do anyway;
* ``first call``: the first call of a fresh ``ntk_fn(f, vmap_axes=0, method="auto")`` (argument
  checks, planning, tracing, compilation and one run), which the check is part of.

    python -m bench.vmap_check [--models cnn,vit] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

import ntkc
from bench.models import MODELS
from ntkc._args import check_independent_examples, resolve_batching


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(name, repeats):
    f, params, x = MODELS[name]()
    jaxpr = jax.make_jaxpr(f)(params, x)
    out = jax.eval_shape(f, params, x)
    batching = resolve_batching(0, x, x, {}, {}, out, out)
    check = _best(lambda: check_independent_examples(f, params, x, {}, batching, jaxpr), repeats)
    trace = _best(lambda: jax.make_jaxpr(f)(params, x), repeats)
    t = time.perf_counter()
    jax.block_until_ready(ntkc.ntk_fn(f, vmap_axes=0)(x, None, params))
    first = time.perf_counter() - t
    return dict(model=name, equations=len(jaxpr.jaxpr.eqns), check=check, trace=trace,
                first_call=first)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.vmap_check", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated models (default: {','.join(MODELS)})")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each timing; the best is kept")
    args = ap.parse_args(argv)
    print(f"ntkc {ntkc.__version__}, JAX {jax.__version__}, {platform.machine()}, "
          f"{jax.devices()[0].device_kind}")
    print("| model | top-level equations | check (ms) | trace f (ms) | first call (s) | check / first call |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = measure(name, args.repeats)
        print(f"| {name} | {r['equations']} | {1e3 * r['check']:.2f} | {1e3 * r['trace']:.1f} | "
              f"{r['first_call']:.2f} | {r['check'] / r['first_call']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
