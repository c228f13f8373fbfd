"""The paper's cases at their scale (issue 13): Flax Linen models as their users write them, every
method of ntkc under ``memory_limit``, with a roofline.

    python -m bench.paper [--quick] [--cases fcn,resnet18_8x8] [--methods structured,auto]
                          [--trace both|traced|untraced] [--x2 both|none|given] [--repeats 3]
                          [--memory-limit-gib 16] [--max-run-s 900] [--width W] [--n N]
                          [--outputs O] [--inline] [--json FILE]
    ntkc bench --suite paper [the same options]

Cases (``--cases``; default all, ``--quick`` a subset of about 20 minutes on 2 CPU cores):
FCN 3 x 2048 ReLU on 3072 inputs (N=16, O=8) and a width sweep; ResNet-18 and ResNet-50 on
224x224x3 at (N, O) = (8, 8), (1, 128), (1, 1000); WideResNet-28-10 on 32x32x3 (N=8, O=10);
ViT-S/16 on 224x224x3 (N=4, O=8). BatchNorm in eval mode, batch_stats closed over.

Each case runs in a child process (its peak RSS is ``ru_maxrss`` of that process), with
``x2=None`` and a distinct ``x2``, under ``trace_axes=()`` and ``(-1,)``, for each method, with
``memory_limit`` (16 GiB by default) on every ntkc call. A method that does not fit is reported
as "does not fit: needs X GiB" (the planner's working-set estimate of the unsplit program); a
split the planner chose is reported as its plan text. Per run: compile seconds, median run
seconds, XLA's FLOP count and memory analysis of the compiled program (unsplit programs), the
GFLOP/s against a float32 matmul and a 3x3 convolution measured in the same run, and the
roofline: the FLOP floor every exact method needs (see :func:`floor`) against XLA's count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench.suite import _peak_bytes as _memory, _xla_flops as _flops

ROOT = pathlib.Path(__file__).resolve().parent.parent
METHODS = ("structured", "jacobian", "ntvp", "auto")
GiB = 2**30

# name -> (model factory in bench.paper_models, its keyword arguments)
CASES = {
    "fcn": ("fcn", dict(n=16, outputs=8, width=2048)),
    "fcn_w256": ("fcn", dict(n=16, outputs=8, width=256)),
    "fcn_w512": ("fcn", dict(n=16, outputs=8, width=512)),
    "fcn_w1024": ("fcn", dict(n=16, outputs=8, width=1024)),
    "resnet18_8x8": ("resnet18", dict(n=8, outputs=8)),
    "resnet18_1x128": ("resnet18", dict(n=1, outputs=128)),
    "resnet18_1x1000": ("resnet18", dict(n=1, outputs=1000)),
    "resnet50_8x8": ("resnet50", dict(n=8, outputs=8)),
    "resnet50_1x128": ("resnet50", dict(n=1, outputs=128)),
    "resnet50_1x1000": ("resnet50", dict(n=1, outputs=1000)),
    "wrn28_10": ("wrn28_10", dict(n=8, outputs=10)),
    "vit_s16": ("vit_s16", dict(n=4, outputs=8)),
}
BOTH = [(False, ()), (False, (-1,)), (True, ()), (True, (-1,))]  # (x2 given, trace_axes)
# --quick: (case, variants)
QUICK = [("fcn", BOTH), ("fcn_w256", BOTH), ("fcn_w512", BOTH), ("fcn_w1024", BOTH),
         ("resnet18_8x8", [(False, (-1,)), (True, (-1,))]), ("wrn28_10", [(False, (-1,))])]
# --quick's time: one timed call after the warm-up, no method estimated at over two minutes (at
# a quarter of the measured rate), and not the slowest baselines, whatever the measured rate
# (ntvp on ResNet-18 runs 1-2 min a call, jacobian on WRN-28-10 2-3 min)
QUICK_REPEATS, QUICK_MAX_RUN_S = 1, 120.0
QUICK_SKIP = {"resnet18_8x8": ("ntvp",), "wrn28_10": ("jacobian", "ntvp")}


# ----------------------------------------------------------------------------- rates

def _best_seconds(fn, repeats=5):
    fn().block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn().block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def rates() -> dict:
    """GFLOP/s of a 2048² float32 matmul and of a 3x3 convolution (batch 8, 56x56x64 -> 64,
    compiled with the XLA options ntkc uses for programs with convolutions), best of 5."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntkc
    from bench.suite import matmul_gflops

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 56, 56, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)) / 24, jnp.float32)
    conv = lambda w, x: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    options = ntkc.ntk_fn(conv, vmap_axes=0).compiler_options(x[:1], None, w)
    jitted = jax.jit(conv, compiler_options=options or None)
    conv_flops = 2 * 8 * 56 * 56 * 64 * 64 * 9
    return {"matmul_gflops": matmul_gflops(),
            "conv_gflops": conv_flops / _best_seconds(lambda: jitted(w, x)) / 1e9}


# ----------------------------------------------------------------------------- a case

def pass_flops(f, params, x) -> dict:
    """XLA's FLOPs, per example, of a forward pass, of a VJP w.r.t. the input (forward plus the
    cotangent pass through the activations) and of a VJP w.r.t. the params."""
    import jax

    x = x[:1]
    y = jax.eval_shape(f, params, x)
    ct = jax.numpy.ones(y.shape, y.dtype)
    fwd = _flops(jax.jit(f).lower(params, x).compile())
    vjp_x = _flops(jax.jit(lambda p, x, c: jax.vjp(lambda x: f(p, x), x)[1](c))
                   .lower(params, x, ct).compile())
    vjp_p = _flops(jax.jit(lambda p, x, c: jax.vjp(lambda p: f(p, x), p)[1](c))
                   .lower(params, x, ct).compile())
    return {"forward": fwd, "vjp_input": vjp_x, "vjp_params": vjp_p}


def floor(n1: int, n2: int, cotangent_flops, terms_flops) -> dict:
    """The FLOP floor of an exact NTK, from the structured plan of the unsplit program (None
    when it is split or not available): the cotangent passes every exact method needs, as
    ntkc's cost rules count them per primitive (``plan.cotangents``: a forward pass of each
    example of each side, and the O cotangents of each example pulled back to every use of a
    parameter, for x1 and, when x2 is given, x2; 2 FLOPs per multiply-add; the first layer's
    input gradient is not counted, the NTK does not need it), plus the cheapest contraction
    order of each structured term the cost model found (the structured estimate less the
    passes: ``plan.terms``' costs, with x2=None's symmetric terms counted once).

    XLA's own counts of a forward pass and of a VJP per example are reported beside it
    (``pass_*_flops``) to show what one VJP costs in forward passes."""
    total = None if cotangent_flops is None or terms_flops is None else cotangent_flops + terms_flops
    return {"floor_passes_flops": cotangent_flops, "floor_terms_flops": terms_flops,
            "floor_flops": total, "floor_examples": n1 + n2}


def size(nbytes: float) -> str:
    """Bytes in GiB, or MiB / KiB below them."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def _estimate_whole(f, params, x1, x2, trace, method):
    """The planner's working-set estimate (bytes) of ``method``'s unsplit program (even where it
    exceeds the device's memory: a limit nothing reaches skips that refusal)."""
    import ntkc

    kfn = ntkc.ntk_fn(f, trace, vmap_axes=0, method=method, memory_limit=2**62)
    config, args = kfn.prepare(x1, x2, params)
    req = kfn._cost_model(config, args, warn=False)
    assignment = config.leaf_methods or (config.method,) * len(req.leaf_sizes)
    return float(req.peak(assignment)), config.method, _estimate_flops(req, config)


def _estimate_flops(req, config):
    from ntkc import _auto

    costs = _auto.method_costs(req)
    return costs.get("mixed" if config.leaf_methods else config.method)


def run_method(f, params, x1, x2, trace, method, limit, repeats, max_run_s, rate,
               plan_only=False) -> tuple:
    """One method on one variant: ``(row, kernel or None)``."""
    import jax
    import numpy as np

    import ntkc

    row = {"method": method}
    try:
        estimate, resolved, est_flops = _estimate_whole(f, params, x1, x2, trace, method)
    except Exception as err:  # noqa: BLE001  a method that cannot run the model is a result
        row.update(status=f"cannot run: {type(err).__name__}: {str(err)[:200]}")
        return row, None
    row.update(estimate_bytes=estimate, estimate_flops=est_flops, resolved_unsplit=resolved)
    kfn = ntkc.ntk_fn(f, trace, vmap_axes=0, method=method, memory_limit=limit)
    start = time.perf_counter()
    try:
        config, _ = kfn.prepare(x1, x2, params)
    except ntkc.PathMemoryError as err:
        row.update(status=f"does not fit: needs {size(estimate)}", why=str(err)[:400])
        return row, None
    plan_s = time.perf_counter() - start
    split = bool(config.block or config.chunk)
    plan = ntkc.plan(f, x1, x2, params, trace_axes=trace, vmap_axes=0, method=method,
                     memory_limit=limit) if split or method == "structured" else None
    row.update(plan=f"{plan.method} {plan.split}" if split else config.method, split=split,
               plan_s=plan_s)
    if plan is not None:
        row["plan_terms_flops"] = float(sum(t.cost.flops for t in plan.terms))
        row["plan_cotangent_flops"] = float(plan.cotangents.flops)
    if plan_only:
        row["status"] = "planned"
        return row, None
    if est_flops is not None and est_flops / (0.25 * rate) > max_run_s:
        row.update(status=f"not run: estimated {est_flops / 1e12:.3g} TFLOP, about "
                          f"{est_flops / (0.25 * rate) / 60:.0f} min at a quarter of the "
                          f"machine's rate, over --max-run-s {max_run_s:g}")
        return row, None
    if split:  # several programs: the first call compiles them
        start = time.perf_counter()
        theta = jax.block_until_ready(kfn(x1, x2, params))
        row["first_call_s"] = time.perf_counter() - start
        call = lambda: kfn(x1, x2, params)  # noqa: E731
    else:
        options = kfn.compiler_options(x1, x2, params)
        start = time.perf_counter()
        lowered = jax.jit(lambda a, b, p: kfn(a, b, p), compiler_options=options or None).lower(
            x1, x2, params)
        row["trace_s"] = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        row["compile_s"] = time.perf_counter() - start
        row.update(xla_flops=_flops(compiled), xla_peak_bytes=_memory(compiled))
        call = lambda: compiled(x1, x2, params)  # noqa: E731
        theta = jax.block_until_ready(call())  # warm-up, not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    row.update(status="ran", run_s_median=statistics.median(times), run_s_min=min(times),
               runs=len(times), rss_max_so_far_mib=resource.getrusage(
                   resource.RUSAGE_SELF).ru_maxrss / 1024)
    if split:
        row["compile_s"] = max(row["first_call_s"] - row["run_s_median"], 0.0)
    return row, np.asarray(theta, np.float64)


def run_case(name, model, kwargs, variants, methods, limit, repeats, max_run_s, rates_,
             log=print, plan_only=False) -> list[dict]:
    """Every variant and method of one case, in this process."""
    import jax

    from bench import paper_models

    start = time.perf_counter()
    f, params, x1, x2 = paper_models.MODELS[model](**kwargs)
    build_s = time.perf_counter() - start
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    passes = {} if plan_only else pass_flops(f, params, x1)
    conv = model != "fcn" and model != "vit_s16"
    rate = (rates_["conv_gflops"] if conv else rates_["matmul_gflops"]) * 1e9
    log(f"\n{name}: {model} {kwargs}, P={n_params:,}, " + ", ".join(
        f"{k} {v / 1e9:.3g} GFLOP/example" for k, v in passes.items())
        + f" (model built in {build_s:.0f} s)")
    rows = []
    for given, trace in variants:
        other = x2 if given else None
        n2 = kwargs["n"] if given else 0
        terms_flops = cotangent_flops = None
        thetas = {}
        for method in methods:
            row, theta = run_method(f, params, x1, other, trace, method, limit, repeats,
                                    max_run_s, rate, plan_only)
            if method == "structured" and row.get("estimate_flops") and row.get(
                    "plan_cotangent_flops") and not row.get("split"):
                # the terms as the cost model totals them (x2=None: symmetric terms halved);
                # plan.terms' costs are for two different sides
                cotangent_flops = row["plan_cotangent_flops"]
                terms_flops = row["estimate_flops"] - cotangent_flops
            row.update(case=name, model=model, params=n_params, n=kwargs["n"],
                       outputs=kwargs["outputs"], width=kwargs.get("width"),
                       x2="given" if given else "None", trace_axes=list(trace), **{
                           f"pass_{k}_flops": v for k, v in passes.items()})
            if theta is not None:
                thetas[method] = theta
            rows.append(row)
        reference = thetas.get("jacobian")
        fl = floor(kwargs["n"], n2, cotangent_flops, terms_flops)
        for row in rows[-len(methods):]:
            row.update(fl)
            theta = thetas.get(row["method"])
            if reference is not None and theta is not None:
                row["rel_err_vs_jacobian"] = float(
                    abs(theta - reference).max() / (abs(reference).max() or 1.0))
            if row.get("xla_flops"):
                row["gflops"] = row["xla_flops"] / row["run_s_median"] / 1e9
                row["percent_matmul"] = 100 * row["gflops"] / rates_["matmul_gflops"]
                row["percent_conv"] = 100 * row["gflops"] / rates_["conv_gflops"]
                if fl["floor_flops"]:
                    row["xla_over_floor"] = row["xla_flops"] / fl["floor_flops"]
            log(line(row))
    return rows


# ----------------------------------------------------------------------------- tables

COLUMNS = ["case", "x2", "trace", "method", "plan / status", "compile s", "median s",
           "est. GFLOP", "XLA GFLOP", "floor GFLOP", "XLA / floor", "GFLOP/s", "% matmul", "% conv",
           "XLA peak MiB", "est. MiB", "RSS MiB", "rel err"]


def _f(v, spec):
    return "-" if v is None else format(v, spec)


def cells(row) -> list[str]:
    status = row.get("status", "")
    plan = row.get("plan", "") if status in ("ran", "planned") else status
    g = lambda k: None if row.get(k) is None else row[k] / 1e9  # noqa: E731
    mib = lambda k: None if row.get(k) is None else row[k] / 2**20  # noqa: E731
    return [row["case"], row["x2"], str(tuple(row["trace_axes"])), row["method"], plan,
            _f(row.get("compile_s"), ".1f"), _f(row.get("run_s_median"), ".3g"),
            _f(g("estimate_flops"), ".4g"), _f(g("xla_flops"), ".4g"), _f(g("floor_flops"), ".4g"),
            _f(row.get("xla_over_floor"), ".2f"), _f(row.get("gflops"), ".1f"),
            _f(row.get("percent_matmul"), ".0f"), _f(row.get("percent_conv"), ".0f"),
            _f(mib("xla_peak_bytes"), ".0f"), _f(mib("estimate_bytes"), ".0f"),
            _f(row.get("case_rss_mib"), ".0f"), _f(row.get("rel_err_vs_jacobian"), ".1e")]


def line(row) -> str:
    return " | ".join(cells(row))


def _short(row) -> str:
    """One method's cell of the compact table: what ran (plan, median seconds) or why not."""
    status = row.get("status", "")
    if status not in ("ran", "planned"):
        return status.split(":")[0] + (": " + status.split(": ", 1)[1].split(",")[0]
                                       if status.startswith("does not fit") else "")
    text = row.get("plan", "")
    text = text.replace(" of the ", "/").replace(" outputs along output axis ", " out. ax ")
    if row.get("estimate_flops") is not None:
        text += f", {row['estimate_flops'] / 1e9:.4g} GFLOP est."
    if status == "ran":
        text += f", **{row['run_s_median']:.3g} s**"
    return text


def compact(report) -> str:
    """A row per case and variant, a column per method (markdown)."""
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    out = ["| case (P) | x2 | trace | " + " | ".join(methods) + " |",
           "|" + "---|" * (3 + len(methods))]
    groups = {}
    for r in report["rows"]:
        groups.setdefault((r["case"], r["x2"], tuple(r["trace_axes"])), {})[r["method"]] = r
    for (case, x2, trace), by_method in groups.items():
        params = next(iter(by_method.values()))["params"]
        out.append(f"| {case} ({params / 1e6:.3g}M) | {x2} | {trace} | " + " | ".join(
            _short(by_method[m]).replace("|", "/") if m in by_method else "-" for m in methods)
            + " |")
    return "\n".join(out) + "\n"


def markdown(report) -> str:
    source = report.get("source", {})
    dirty = len(source.get("uncommitted_ntkc", []))
    out = [f"ntkc {report['ntkc']} ({source.get('commit', '?')[:7]}"
           f"{f', {dirty} uncommitted files under ntkc/' if dirty else ''}), JAX {report['jax']}, {report['device']} "
           f"({report['machine']}, {report['cpus']} CPUs), memory_limit "
           f"{report['memory_limit_gib']:g} GiB; float32 matmul {report['matmul_gflops']:.1f} "
           f"GFLOP/s, 3x3 conv {report['conv_gflops']:.1f} GFLOP/s; {report['date']}", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |"
            for r in report["rows"]]
    for name, err in report.get("failed_cases", {}).items():
        out.append(f"\n{name}: failed: {err}")
    return "\n".join(out) + "\n\n" + compact(report)


# ----------------------------------------------------------------------------- driver

def _methods(name, args, methods):
    return [m for m in methods if not (args.quick and m in QUICK_SKIP.get(name, ()))]


def _variants(name, args):
    base = dict(QUICK)[name] if args.quick and name in dict(QUICK) else BOTH
    return [(g, t) for g, t in base
            if args.x2 in ("both", "given" if g else "none")
            and args.trace in ("both", "traced" if t else "untraced")]


def _case_kwargs(name, args):
    model, kwargs = CASES[name]
    kwargs = dict(kwargs)
    for key in ("n", "outputs", "width"):
        value = getattr(args, key)
        if value is not None and (key != "width" or model == "fcn"):
            kwargs[key] = value
    return model, kwargs


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None,
                    help=f"comma-separated cases (default: all; --quick: "
                         f"{','.join(n for n, _ in QUICK)}); valid: {','.join(CASES)}")
    ap.add_argument("--quick", action="store_true",
                    help="the quick subset (about 20 minutes on 2 CPU cores): the FCN and its "
                         "width sweep in full, ResNet-18 at (8, 8) traced with x2=None and "
                         "given (no ntvp), WRN-28-10 traced with x2=None (structured and "
                         "auto); --repeats and --max-run-s default to "
                         f"{QUICK_REPEATS} and {QUICK_MAX_RUN_S:g}")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated methods (default: {','.join(METHODS)})")
    ap.add_argument("--trace", choices=("both", "traced", "untraced"), default="both",
                    help="trace_axes=(-1,) (traced), () (untraced), or both (default)")
    ap.add_argument("--x2", choices=("both", "none", "given"), default="both",
                    help="x2=None, a distinct x2, or both (default)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per method (default: 3; --quick: 1)")
    ap.add_argument("--memory-limit-gib", type=float, default=16.0,
                    help="memory_limit of every ntkc call, in GiB (default: 16)")
    ap.add_argument("--max-run-s", type=float, default=None,
                    help="a method whose estimated FLOPs at a quarter of the measured matmul/conv "
                         "rate take longer than this is reported, not run (default: 900; "
                         f"--quick: {QUICK_MAX_RUN_S:g})")
    ap.add_argument("--n", type=int, default=None, help="examples, for every chosen case")
    ap.add_argument("--outputs", type=int, default=None, help="outputs O, for every chosen case")
    ap.add_argument("--width", type=int, default=None, help="the FCN's width (FCN cases only)")
    ap.add_argument("--plan-only", action="store_true",
                    help="plan every case (estimates, splits, what does not fit), run nothing")
    ap.add_argument("--inline", action="store_true",
                    help="run the cases in this process (no child processes, no per-case RSS)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case child (default: 3600)")
    ap.add_argument("--json", default=None,
                    help="where to write the JSON (default: bench/results/paper-<date>.json; the "
                         "markdown table beside it, .md)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rates", default=None, help=argparse.SUPPRESS)
    return ap


def _source() -> dict:
    """The commit, and the files under ntkc/ with uncommitted changes (a shared tree)."""
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_ntkc": git("status", "--porcelain", "--", "ntkc").splitlines()}


def _check_list(text, valid, what):
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in valid]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return items


def parse(argv=None) -> argparse.Namespace:
    """The arguments, with the defaults that depend on --quick filled in."""
    args = parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else 3
    if args.max_run_s is None:
        args.max_run_s = QUICK_MAX_RUN_S if args.quick else 900.0
    return args


def main(argv=None) -> int:
    args = parse(argv)
    methods = _check_list(args.methods, METHODS, "methods")
    limit = int(args.memory_limit_gib * GiB)
    if args.child:  # one case, in a child process
        sys.path.insert(0, str(ROOT))
        model, kwargs = _case_kwargs(args.child, args)
        rows = run_case(args.child, model, kwargs, _variants(args.child, args),
                        _methods(args.child, args, methods), limit,
                        max(args.repeats, 1), args.max_run_s, json.loads(args.rates),
                        log=lambda s: print(s, flush=True), plan_only=args.plan_only)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for row in rows:
            row["case_rss_mib"] = rss
        pathlib.Path(args.child_out).write_text(json.dumps(rows))
        return 0
    import jax

    import ntkc

    names = (_check_list(args.cases, list(CASES), "cases") if args.cases
             else [n for n, _ in QUICK] if args.quick else list(CASES))
    rates_ = (json.loads(args.rates) if args.rates else
              {"matmul_gflops": float("nan"), "conv_gflops": float("nan")} if args.plan_only
              else rates())
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "jax": jax.__version__, "ntkc": ntkc.__version__,
              "device": jax.devices()[0].device_kind, "machine": platform.machine(),
              "cpus": len(__import__("os").sched_getaffinity(0)),
              "memory_limit_gib": args.memory_limit_gib, "argv": list(argv or sys.argv[1:]),
              "source": _source(), **rates_, "rows": [], "failed_cases": {}}
    print(f"ntkc {report['ntkc']}, JAX {report['jax']}, matmul {rates_['matmul_gflops']:.1f} "
          f"GFLOP/s, conv {rates_['conv_gflops']:.1f} GFLOP/s", flush=True)
    print(" | ".join(COLUMNS), flush=True)
    path = pathlib.Path(args.json) if args.json else (
        ROOT / "bench" / "results" /
        f"paper-{'plan-' if args.plan_only else ''}{'quick-' if args.quick else ''}{report['date'][:16].replace(':', '')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        model, kwargs = _case_kwargs(name, args)
        variants = _variants(name, args)
        if not variants or not _methods(name, args, methods):
            continue
        if args.inline:
            report["rows"] += run_case(name, model, kwargs, variants,
                                       _methods(name, args, methods), limit,
                                       max(args.repeats, 1), args.max_run_s, rates_,
                                       plan_only=args.plan_only)
        else:
            out = pathlib.Path(tempfile.mkdtemp(prefix="ntkc-paper-")) / "rows.json"
            child = [a for a in (argv if argv is not None else sys.argv[1:])
                     if a not in ("--quick",)]
            cmd = [sys.executable, "-m", "bench.paper", *child, "--child", name,
                   "--child-out", str(out), "--rates", json.dumps(rates_)]
            if args.quick:
                cmd.append("--quick")
            try:
                proc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout, text=True,
                                      stdout=sys.stdout, stderr=subprocess.PIPE)
                err = None if proc.returncode == 0 else (
                    f"exit {proc.returncode}: {(proc.stderr or '')[-600:]}")
            except subprocess.TimeoutExpired:
                err = f"killed after --timeout {args.timeout:g} s"
            if err is None:
                report["rows"] += json.loads(out.read_text())
            else:
                report["failed_cases"][name] = err
                print(f"{name}: failed: {err}", flush=True)
        path.write_text(json.dumps(report, indent=1))
        path.with_suffix(".md").write_text(markdown(report))
    print(f"\nwrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
