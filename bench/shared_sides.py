"""x2=None: the contraction orders found when x2's repeated steps are free, against those found
when every step counts (the search before it knew).

For each of the paper's cases (``bench/paper.py``) with x2=None, traced and untraced: the planned
structured terms' FLOPs (repeated steps counted once) under both searches, and how many terms
changed order. With ``--xla``, the cases named there are also compiled both ways and XLA's FLOP
count of each program is reported (the kernel is the same: both are exact).

    python -m bench.shared_sides [--cases resnet18_8x8,...] [--xla resnet18_1x128] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time

import jax

import ntkc
from bench import paper, paper_models
from ntkc.passes import network, path


def _search_as_before(*args, mirror=None, **kwargs):
    """The order chosen as if every step cost its FLOPs; its repeated steps still cost nothing
    in XLA, so they are counted out as before."""
    info = path.optimize(*args, **kwargs)
    return dataclasses.replace(
        info, repeated_flops=path.repeated_flops(info.tree, info.steps, mirror or {}))


@contextlib.contextmanager
def every_step_counted():
    """The order search as it was: no operand known to repeat another's array."""
    searched = network.optimize
    network.optimize = _search_as_before
    try:
        yield
    finally:
        network.optimize = searched


def terms(f, params, x, trace_axes):
    """Each term's order and FLOPs; where the kernel is split (16 GiB), of one part."""
    plan = ntkc.plan(f, x, None, params, trace_axes=trace_axes, vmap_axes=0,
                     method="structured", memory_limit=16 * 2**30)
    return [(t.order, t.cost.flops) for t in plan.terms], plan.split


def xla_flops(f, params, x, trace_axes):
    jax.clear_caches()
    compiled = ntkc.compile(f, x, None, params, trace_axes=trace_axes, vmap_axes=0,
                            method="structured")
    return compiled.cost.xla_flops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="fcn,resnet18_8x8,resnet18_1x128,resnet18_1x1000,"
                    "resnet50_8x8,resnet50_1x128,wrn28_10,vit_s16")
    ap.add_argument("--xla", default="", help="cases to compile both ways (XLA's FLOPs)")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    args = ap.parse_args(argv)
    compile_too = set(filter(None, args.xla.split(",")))
    print(f"jax {jax.__version__}, {platform.machine()}, x2=None, structured")
    print("| case | trace_axes | terms | changed | planned terms GFLOP: every step / shared |"
          " XLA GFLOP: every step / shared |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in args.cases.split(","):
        model, kwargs = paper.CASES[name]
        f, params, x, _ = getattr(paper_models, model)(**kwargs)
        for trace_axes in ((), (-1,)):
            with every_step_counted():
                before, _ = terms(f, params, x, trace_axes)
            after, split = terms(f, params, x, trace_axes)
            row = dict(case=name, trace_axes=list(trace_axes), terms=len(after),
                       split=str(split or ""),
                       changed=sum(a[0] != b[0] for a, b in zip(after, before)),
                       gflop_before=sum(b[1] for b in before) / 1e9,
                       gflop_after=sum(a[1] for a in after) / 1e9)
            xla = "-"
            if name in compile_too:
                t0 = time.perf_counter()
                with every_step_counted():
                    row["xla_gflop_before"] = xla_flops(f, params, x, trace_axes) / 1e9
                row["xla_gflop_after"] = xla_flops(f, params, x, trace_axes) / 1e9
                row["compile_s"] = time.perf_counter() - t0
                xla = f"{row['xla_gflop_before']:.4g} / {row['xla_gflop_after']:.4g}"
            rows.append(row)
            part = f" (each part: {split})" if split else ""
            print(f"| {name}{part} | {tuple(trace_axes)} | {row['terms']} | {row['changed']} | "
                  f"{row['gflop_before']:.4g} / {row['gflop_after']:.4g} | {xla} |", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(jax=jax.__version__, machine=platform.machine(), rows=rows), fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
