"""Scaling of each method on the MLP: run time as the width grows and as the number of examples grows.

    python -m bench --scaling [--methods jacobian,ntvp,structured] [--widths 64,128,...] [--n 8]
                              [--ns 4,8,...] [--width 512] [--outputs 10] [--inputs 784] [--trace both|traced|untraced]
                              [--repeats 3] [--max-bytes 4GiB] [--point-budget 60]
                              [--noise-floor 0.001] [--json FILE] [--no-plot]

Model: ``bench.models.mlp`` (784-width^3-outputs, ReLU, float32), ``vmap_axes=0``, ``trace_axes``
``()`` and/or ``(-1,)``. Two sweeps: (a) width over ``--widths`` at fixed ``--n`` examples,
(b) examples over ``--ns`` at fixed ``--width``. Per point: compile, one warm-up run, then the
median (and min) of ``--repeats`` timed runs.

Points are skipped, and recorded as skipped with the reason, when
  * the method is jacobian and its per-example Jacobians, N*O*P*4 bytes, exceed ``--max-bytes``
    (checked before compiling);
  * XLA's memory analysis of the compiled program (arguments + outputs + temporaries) exceeds
    ``--max-bytes`` (any method; this is what catches ntvp, whose working set is of the same order);
  * a smaller point of the same method and trace_axes in the same sweep used up ``--point-budget``
    seconds of timed runs (that point stops repeating once its runs have used the budget, and is
    marked ``budget_hit``).

The exponent of each curve is the least-squares slope of log(median time) against log(width) or
log(N) over its measured points, leaving out points under ``--noise-floor`` seconds when at least
three others remain. XLA's FLOP count of each program is fitted the same way (``flops_exponent``).
Results: a table, the raw points, JSON (default ``bench/results/scaling-<device>-jax<version>.json``)
and, when matplotlib is importable, a log-log PNG beside the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import statistics
import time

import numpy as np

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_NS = (4, 8, 16, 32, 64)
DEFAULT_N = 8  # examples in the width sweep
DEFAULT_WIDTH = 512  # width in the N sweep
DEPTH = 3
INPUTS = 784
METHODS = ("jacobian", "ntvp", "structured", "auto")
DEFAULT_METHODS = ("jacobian", "ntvp", "structured")
TRACES = {"both": [(), (-1,)], "traced": [(-1,)], "untraced": [()]}
SWEEP_AXIS = {"width": "width", "n": "n"}  # sweep name -> the point field that varies


# --- sizes -------------------------------------------------------------------------------------

def mlp_params(width: int, outputs: int = 10, depth: int = DEPTH, inputs: int = INPUTS) -> int:
    """Parameter count of bench.models.mlp (weights and biases), without building it."""
    sizes = [inputs] + [width] * depth + [outputs]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def jacobian_bytes(n: int, outputs: int, params: int) -> int:
    """float32 bytes of the per-example Jacobians the jacobian method forms: N*O*P*4."""
    return n * outputs * params * 4


def parse_bytes(text: str) -> int:
    """'4GiB', '512MiB', '1e9', '4096' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B?|B)?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4GiB, 512MiB, 1e9)")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


# --- the fit -----------------------------------------------------------------------------------

def fit_exponent(xs, ts, noise_floor: float = 1e-3, min_points: int = 3) -> dict:
    """Least-squares fit of log t = a log x + b, i.e. t ~ exp(b) * x**a.

    Points with ``t < noise_floor`` are left out when at least ``min_points`` others remain;
    otherwise every point is used. Non-positive times are never used. ``exponent`` is None with
    fewer than two usable points.
    """
    pairs = [(float(x), float(t)) for x, t in zip(xs, ts) if x > 0 and t is not None and t > 0]
    above = [(x, t) for x, t in pairs if t >= noise_floor]
    floor_applied = len(above) >= min_points and len(above) < len(pairs)
    used = above if len(above) >= min_points else pairs
    result = {"exponent": None, "prefactor": None, "r2": None, "used": [x for x, _ in used],
              "below_floor": [x for x, t in pairs if t < noise_floor], "floor_applied": floor_applied}
    if len({x for x, _ in used}) < 2:
        return result
    lx = np.log([x for x, _ in used])
    lt = np.log([t for _, t in used])
    slope, intercept = np.polyfit(lx, lt, 1)
    residual = lt - (slope * lx + intercept)
    spread = float(np.sum((lt - lt.mean()) ** 2))
    result.update(exponent=float(slope), prefactor=float(math.exp(intercept)),
                  r2=(1.0 - float(np.sum(residual**2)) / spread) if spread > 0 else 1.0)
    return result


def fit_curves(points, noise_floor: float = 1e-3) -> list[dict]:
    """One fit per (sweep, method, trace_axes) over its measured points, in first-seen order."""
    curves: dict[tuple, list[dict]] = {}
    for p in points:
        curves.setdefault((p["sweep"], p["method"], tuple(p["trace_axes"])), []).append(p)
    fits = []
    for (sweep, method, trace_axes), pts in curves.items():
        ok = [p for p in pts if p["status"] == "ok"]
        key = SWEEP_AXIS[sweep]
        fit = fit_exponent([p[key] for p in ok], [p["run_s_median"] for p in ok], noise_floor)
        used = set(fit["used"])
        flops = [(p[key], p.get("xla_flops")) for p in ok if p[key] in used and p.get("xla_flops")]
        flops_fit = fit_exponent([x for x, _ in flops], [f for _, f in flops], noise_floor=0.0)
        fits.append({"sweep": sweep, "method": method, "trace_axes": list(trace_axes),
                     "measured": len(ok), "skipped": len(pts) - len(ok), **fit,
                     "flops_exponent": flops_fit["exponent"]})
    return fits


# --- measurement -------------------------------------------------------------------------------

def measure(f, params, x, method, trace_axes, repeats, max_bytes, point_budget_s) -> dict:
    """Compile and time one point; ``status`` is "ok" or "skipped" (XLA's peak over budget)."""
    import jax
    import ntkc
    from bench.suite import _peak_bytes, _xla_flops  # here: suite imports this module lazily too

    kernel_fn = ntkc.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, method=method)
    start = time.perf_counter()
    compiled = jax.jit(lambda x, p: kernel_fn(x, None, p),
                       compiler_options=kernel_fn.compiler_options(x, None, params)
                       ).lower(x, params).compile()
    row = {"compile_s": time.perf_counter() - start, "peak_bytes": _peak_bytes(compiled),
           "xla_flops": _xla_flops(compiled)}
    if row["peak_bytes"] is not None and row["peak_bytes"] > max_bytes:
        return {**row, "status": "skipped",
                "reason": f"XLA peak {row['peak_bytes'] / 2**30:.2f} GiB > max-bytes {max_bytes / 2**30:.2f} GiB"}
    start = time.perf_counter()
    compiled(x, params).block_until_ready()  # warm-up, not counted
    warmup = time.perf_counter() - start
    times = []
    if warmup >= point_budget_s:  # one run already used the budget: it is the measurement
        times.append(warmup)
    while len(times) < repeats and sum(times) < point_budget_s:
        start = time.perf_counter()
        compiled(x, params).block_until_ready()
        times.append(time.perf_counter() - start)
    return {**row, "status": "ok", "warmup_s": warmup, "runs": len(times),
            "run_s_median": statistics.median(times), "run_s_min": min(times),
            "budget_hit": len(times) < repeats or sum(times) >= point_budget_s}


def sweep(name, values, fixed, methods, traces, outputs, repeats, max_bytes, point_budget_s, log=print,
          inputs=INPUTS):
    """Points of one sweep: ``name`` is "width" (values are widths, ``fixed`` is N) or "n"."""
    from bench.models import mlp

    stopped: dict[tuple, float] = {}  # (method, trace_axes) -> the value whose point hit the budget
    points = []
    for value in sorted(values):
        width, n = (value, fixed) if name == "width" else (fixed, value)
        n_params = mlp_params(width, outputs, inputs=inputs)
        estimate = jacobian_bytes(n, outputs, n_params)
        model = None
        for trace_axes in traces:
            for method in methods:
                point = {"sweep": name, "width": width, "n": n, "outputs": outputs, "params": n_params,
                         "method": method, "trace_axes": list(trace_axes), "jacobian_bytes": estimate}
                key = (method, tuple(trace_axes))
                if key in stopped:
                    point.update(status="skipped", reason=f"time budget: the point at {name}={stopped[key]} "
                                                          f"used the {point_budget_s:g} s budget")
                elif method == "jacobian" and estimate > max_bytes:
                    point.update(status="skipped", reason=f"memory: N*O*P*4 = {estimate / 2**30:.2f} GiB "
                                                          f"> max-bytes {max_bytes / 2**30:.2f} GiB")
                else:
                    if model is None:
                        model = mlp(n=n, outputs=outputs, width=width, depth=DEPTH, inputs=inputs)
                    f, params, x = model
                    try:
                        point.update(measure(f, params, x, method, trace_axes, repeats, max_bytes,
                                             point_budget_s))
                    except Exception as err:  # e.g. out of memory: a result too
                        point.update(status="failed", reason=f"{type(err).__name__}: {str(err)[:300]}")
                    if point.get("budget_hit"):
                        stopped[key] = value
                points.append(point)
                log(_point_line(point))
    return points


def _point_line(p) -> str:
    head = (f"{p['sweep']:<6}{p['width']:>6}{p['n']:>5}{p['params']:>12,}  {p['method']:<11}"
            f"{str(tuple(p['trace_axes'])):<8}")
    if p["status"] != "ok":
        return head + f"{p['status']}: {p['reason']}"
    peak = (p["peak_bytes"] or 0) / 2**20
    mark = " (budget hit)" if p["budget_hit"] else ""
    return head + (f"{p['run_s_median']:>11.5f}{p['run_s_min']:>11.5f}{p['runs']:>5}{p['compile_s']:>9.2f}"
                   f"{peak:>10.1f}{mark}")


POINT_HEADER = (f"{'sweep':<6}{'width':>6}{'N':>5}{'params':>12}  {'method':<11}{'trace':<8}"
                f"{'median s':>11}{'min s':>11}{'runs':>5}{'compile':>9}{'peak MiB':>10}")


def run(methods=DEFAULT_METHODS, widths=DEFAULT_WIDTHS, n=DEFAULT_N, ns=DEFAULT_NS, width=DEFAULT_WIDTH,
        outputs=10, traces=((), (-1,)), repeats=3, max_bytes=4 * 2**30, point_budget_s=60.0,
        noise_floor=1e-3, log=print, inputs=INPUTS) -> dict:
    """Both sweeps and their fits, as the JSON report."""
    import jax
    import ntkc

    traces = [tuple(t) for t in traces]
    device = jax.devices()[0].device_kind
    log(f"ntkc {ntkc.__version__}, JAX {jax.__version__}, {device} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs); MLP {inputs}-width^{DEPTH}-{outputs}, float32, vmap_axes=0")
    log(f"width sweep {list(widths)} at N={n}; N sweep {list(ns)} at width={width}; "
        f"{repeats} timed runs per point; max-bytes {max_bytes / 2**30:.2f} GiB; "
        f"point budget {point_budget_s:g} s\n")
    log(POINT_HEADER)
    start = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    common = dict(methods=methods, traces=traces, outputs=outputs, repeats=repeats,
                  max_bytes=max_bytes, point_budget_s=point_budget_s, log=log, inputs=inputs)
    points = sweep("width", widths, n, **common) + sweep("n", ns, width, **common)
    fits = fit_curves(points, noise_floor)
    report = {
        "kind": "scaling",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "ntkc": ntkc.__version__,
        "device": device,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "model": f"bench.models.mlp {inputs}-width^{DEPTH}-{outputs}, ReLU, float32, vmap_axes=0",
        "settings": {"methods": list(methods), "widths": sorted(widths), "n": n, "ns": sorted(ns),
                     "width": width, "outputs": outputs, "inputs": inputs, "traces": [list(t) for t in traces],
                     "repeats": repeats, "max_bytes": max_bytes, "point_budget_s": point_budget_s,
                     "noise_floor_s": noise_floor},
        "wall_s": time.perf_counter() - start,
        # 1/5/15-minute load averages: other processes on a shared machine skew the times
        "load_average": {"before": load_before,
                         "after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "points": points,
        "fits": fits,
    }
    log("")
    log(exponent_table(report))
    return report


def exponent_table(report) -> str:
    """method, trace_axes, width exponent, N exponent (and XLA FLOP exponents)."""
    by_key: dict[tuple, dict] = {}
    for fit in report["fits"]:
        by_key.setdefault((fit["method"], tuple(fit["trace_axes"])), {})[fit["sweep"]] = fit
    s = report["settings"]

    def cell(fit, field):
        value = fit.get(field) if fit else None
        return "-" if value is None else f"{value:.2f}"

    lines = [f"Exponents of median run time (t ~ x^a), width sweep at N={s['n']}, N sweep at width={s['width']}",
             f"{'method':<12}{'trace':<8}{'width exp':>10}{'N exp':>8}{'width pts':>11}{'N pts':>7}"
             f"{'flops w':>9}{'flops N':>9}"]
    for (method, trace), fits in by_key.items():
        w, m = fits.get("width"), fits.get("n")
        lines.append(f"{method:<12}{str(trace):<8}{cell(w, 'exponent'):>10}{cell(m, 'exponent'):>8}"
                     f"{len(w['used']) if w else 0:>11}{len(m['used']) if m else 0:>7}"
                     f"{cell(w, 'flops_exponent'):>9}{cell(m, 'flops_exponent'):>9}")
    return "\n".join(lines)


# --- the plot (optional: needs matplotlib) ------------------------------------------------------

def plot(report, path) -> pathlib.Path | None:
    """Log-log PNG: time vs width and time vs N, one line per (method, trace_axes), the fitted
    exponent in the legend. Returns None (and draws nothing) when matplotlib is not importable."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    styles = {(): "-", (-1,): "--"}
    colors = {"jacobian": "tab:red", "ntvp": "tab:orange", "structured": "tab:blue", "auto": "tab:green"}
    s = report["settings"]
    for ax, sweep_name, label in ((axes[0], "width", f"width (N={s['n']})"),
                                  (axes[1], "n", f"N examples (width={s['width']})")):
        key = SWEEP_AXIS[sweep_name]
        lines = 0
        for fit in (f for f in report["fits"] if f["sweep"] == sweep_name):
            pts = [p for p in report["points"]
                   if p["sweep"] == sweep_name and p["method"] == fit["method"]
                   and p["trace_axes"] == fit["trace_axes"] and p["status"] == "ok"]
            if not pts:
                continue
            lines += 1
            exponent = "n/a" if fit["exponent"] is None else f"{fit['exponent']:.2f}"
            ax.loglog([p[key] for p in pts], [p["run_s_median"] for p in pts], marker="o",
                      linestyle=styles.get(tuple(fit["trace_axes"]), ":"),
                      color=colors.get(fit["method"]),
                      label=f"{fit['method']} trace_axes={tuple(fit['trace_axes'])}: slope {exponent}")
        values = sorted({p[key] for p in report["points"] if p["sweep"] == sweep_name})
        if values:  # plain tick labels at the swept values
            ax.set_xticks(values)
            ax.set_xticklabels([str(v) for v in values])
            ax.set_xticks([], minor=True)
        ax.axhline(s["noise_floor_s"], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(label)
        ax.set_ylabel("median run time (s)")
        ax.set_title(f"time vs {'width' if sweep_name == 'width' else 'N'}")
        if lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no measured points", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"ntkc {report['ntkc']} MLP {s.get('inputs', INPUTS)}-width^{DEPTH}-{s['outputs']}, {report['device']}, "
                 f"JAX {report['jax']}")
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    return path


# --- command line ------------------------------------------------------------------------------

def _ints(text):
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if values and min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values  # empty (--ns=): that sweep is not run


def _methods(text):
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in METHODS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {bad}; valid: {', '.join(METHODS)}")
    return items


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ntkc bench --scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS))
    ap.add_argument("--widths", type=_ints, default=list(DEFAULT_WIDTHS), help="widths of the width sweep (--widths= skips it)")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="examples in the width sweep")
    ap.add_argument("--ns", type=_ints, default=list(DEFAULT_NS), help="examples of the N sweep (--ns= skips it)")
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="width in the N sweep")
    ap.add_argument("--outputs", type=int, default=10)
    ap.add_argument("--inputs", type=int, default=INPUTS,
                    help="input features (small: the parameters grow like width², as in the paper)")
    ap.add_argument("--trace", choices=tuple(TRACES), default="both")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point after compilation")
    ap.add_argument("--max-bytes", type=parse_bytes, default=4 * 2**30,
                    help="skip points over this memory (jacobian: N*O*P*4; any: XLA's peak); default 4GiB")
    ap.add_argument("--point-budget", type=float, default=60.0,
                    help="seconds of timed runs per point; larger points of that curve are then skipped")
    ap.add_argument("--noise-floor", type=float, default=1e-3,
                    help="seconds: faster points are left out of the fit when 3 others remain")
    ap.add_argument("--json", default=None,
                    help="where to write the results (default: bench/results/scaling-<device>-jax<version>.json)")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    return ap


def default_path(report) -> pathlib.Path:
    return (pathlib.Path(__file__).parent / "results" /
            f"scaling-{report['device'].replace(' ', '_')}-jax{report['jax']}.json")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report = run(args.methods, args.widths, args.n, args.ns, args.width, args.outputs, TRACES[args.trace],
                 max(args.repeats, 1), args.max_bytes, args.point_budget, args.noise_floor,
                 inputs=args.inputs)
    path = pathlib.Path(args.json) if args.json else default_path(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    if not args.no_plot:
        png = plot(report, path.with_suffix(".png"))
        print(f"wrote {png}" if png else "matplotlib is not importable: no plot (pip install -e .[bench])")
    return 0
