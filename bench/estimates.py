"""The planner's estimates against XLA's analyses of the programs they describe.

For each method (structured, jacobian, ntvp), small model, ``x2`` None or given, and traced or
untraced outputs: the working set the planner checks ``memory_limit`` against
(``CostModel.peak``) next to XLA's ``compiled.memory_analysis()`` of the compiled kernel program
(arguments + outputs + temporaries), and the FLOP estimate ``method="auto"`` compares
(``CostModel.cost``) next to ``compiled.cost_analysis()``.

    python -m bench.estimates [--models mlp,cnn,...] [--out bench/results/estimates.md]

Writes a Markdown table (and the same rows as JSON next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

import ntkc
from ntkc._api import KernelFunction
from bench import models

METHODS = ("structured", "jacobian", "ntvp")


def _resnet18(n, outputs):
    from bench import paper_models  # Flax: imported only for this model

    f, params, x1, x2 = paper_models.resnet18(n=n, outputs=outputs, image=32)
    return f, params, x1, x2


# name -> (f, params, x1, x2): small sizes, so that every program compiles in seconds
def _bench(factory, **kw):
    def build():
        f, params, x = factory(**kw)
        n = x.shape[0]
        return f, params, x[: n // 2], x[n // 2:]
    return build


CASES = {
    "mlp": _bench(models.mlp, n=16, width=256, depth=2, inputs=64),
    "cnn": _bench(models.cnn, n=8, channels=16, image=16),
    "wrn": _bench(models.wide_resnet, n=8, image=16),
    "vit": _bench(models.vit, n=8, dim=32),
    "resnet18": lambda: _resnet18(4, 10),
}


def xla_numbers(f, params, x1, x2, method, trace_axes, vmap_axes=0):
    """(XLA's bytes: arguments + outputs + temporaries, XLA's FLOPs) of the compiled kernel."""
    compiled = ntkc.compile(f, x1, x2, params, trace_axes=trace_axes, vmap_axes=vmap_axes,
                            method=method)
    m = compiled.executable.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return float(total), compiled.cost.xla_flops


def estimates(f, params, x1, x2, method, trace_axes, vmap_axes=0):
    """(the planner's working set, its FLOPs) for ``method`` on every leaf."""
    kfn = KernelFunction(f, trace_axes=trace_axes, vmap_axes=vmap_axes, method=method)
    config, args = kfn.prepare(x1, x2, params)
    cost_model = kfn._cost_model(config, args, warn=False)
    assignment = (method,) * len(cost_model.leaf_sizes)
    return cost_model.peak(assignment), cost_model.cost(assignment)


def measure(names, methods=METHODS):
    rows = []
    for name in names:
        f, params, x1, x2 = CASES[name]()
        for trace_axes in ((-1,), ()):
            for given in (False, True):
                for method in methods:
                    b = x2 if given else None
                    start = time.perf_counter()
                    est_bytes, est_flops = estimates(f, params, x1, b, method, trace_axes)
                    xla_bytes, xla_flops = xla_numbers(f, params, x1, b, method, trace_axes)
                    rows.append(dict(
                        model=name, n=int(x1.shape[0]), outputs=int(f(params, x1).shape[-1]),
                        traced=bool(trace_axes), x2="given" if given else "None",
                        method=method, est_mib=est_bytes / 2**20, xla_mib=xla_bytes / 2**20,
                        mem_ratio=est_bytes / xla_bytes, est_gflop=est_flops / 1e9,
                        xla_gflop=(xla_flops or float("nan")) / 1e9,
                        flop_ratio=est_flops / xla_flops if xla_flops else float("nan"),
                        seconds=time.perf_counter() - start))
                    print(_line(rows[-1]), flush=True)
    return rows


HEADER = ("| model | N | O | traced | x2 | method | est. MiB | XLA MiB | est./XLA | "
          "est. GFLOP | XLA GFLOP | est./XLA |")


def _line(r) -> str:
    return (f"| {r['model']} | {r['n']} | {r['outputs']} | {'yes' if r['traced'] else 'no'} | "
            f"{r['x2']} | {r['method']} | {r['est_mib']:.3g} | {r['xla_mib']:.3g} | "
            f"**{r['mem_ratio']:.2f}** | {r['est_gflop']:.3g} | {r['xla_gflop']:.3g} | "
            f"{r['flop_ratio']:.2f} |")


def table(rows) -> str:
    return "\n".join([HEADER, "|" + "---|" * 12] + [_line(r) for r in rows])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="bench/results/estimates-cpu-2core-jax"
                                     f"{jax.__version__}.md")
    args = ap.parse_args(argv)
    rows = measure(args.models.split(","), args.methods.split(","))
    text = table(rows)
    worst = max(rows, key=lambda r: max(r["mem_ratio"], 1 / r["mem_ratio"]))
    summary = (f"\n\n{platform.machine()}, JAX {jax.__version__}, load {os.getloadavg()[0]:.1f}; "
               f"working set est./XLA from {min(r['mem_ratio'] for r in rows):.2f} to "
               f"{max(r['mem_ratio'] for r in rows):.2f} (worst: {worst['model']} "
               f"{worst['method']})\n")
    print(text + summary)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text + summary)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
