"""The benchmark suite: every method of ntkc on the benchmark models, measured in one run.

    python -m bench [--models mlp,cnn] [--methods jacobian,structured] [--n 8] [--outputs 10]
                    [--trace both|traced|untraced] [--repeats 5] [--json FILE]
    python -m bench --suite paper [--quick] [...]   (bench/paper.py: the paper's cases)

Per case: trace and compile seconds, median and min run seconds (after compilation, >= 5 runs
and >= 0.5 s of runs per method, up to 50; the methods' runs interleaved so that a shared
machine's drift falls on all of them alike),
peak memory (XLA's memory analysis of the compiled program), XLA's FLOP count, the achieved
GFLOP/s against a dense float32 matmul's GFLOP/s measured in the same run, agreement with the
jacobian method, and the cost model's predicted ranking of the methods against the measured one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import ntkc
from ntkc import _api

from bench.models import MODELS

DEFAULT_N = {"mlp": 32, "cnn": 16, "wrn": 8, "vit": 8, "mixer": 8, "rnn": 16}
METHODS = ("jacobian", "ntvp", "structured", "auto")


def matmul_gflops(size=2048, repeats=5) -> float:
    """The machine's dense float32 matmul rate, as a ceiling for achieved GFLOP/s."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / min(times) / 1e9


def _xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return None if value is None else float(value)


def _peak_bytes(compiled) -> int | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def compile_case(f, params, x, method, trace_axes):
    """The compiled kernel program of one method, its first result and what compiling cost."""
    kernel_fn = ntkc.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, method=method)
    start = time.perf_counter()
    config, _ = kernel_fn.prepare(x, None, params)
    lowered = jax.jit(lambda x, p: kernel_fn(x, None, p),
                      compiler_options=kernel_fn.compiler_options(x, None, params)).lower(x, params)
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    theta = compiled(x, params).block_until_ready()  # the warm-up run, not timed
    return compiled, theta, {
        "method": method,
        "resolved": config.method,
        "trace_s": trace_s,
        "compile_s": compile_s,
        "peak_bytes": _peak_bytes(compiled),
        "xla_flops": _xla_flops(compiled),
    }


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n methods in which each method runs right after every other one equally often
    (a balanced Latin square): a large program leaves the allocator and caches in a state the
    next program pays for, so no method may always follow the same one."""
    base = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]
    rows = [[(b + i) % n for b in base] for i in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def time_interleaved(programs: dict, x, params, repeats, min_seconds=0.5, max_rounds=50) -> dict:
    """Median and min run seconds per method, one run of each method per round, the rounds'
    orders from :func:`balanced_orders`, so that drift of a shared machine and the state one
    program leaves to the next fall on all alike. Rounds go on past ``repeats`` (up to
    ``max_rounds``) until every method has run ``min_seconds`` in all: millisecond programs
    need many runs for a stable median."""
    times = {m: [] for m in programs}
    names = list(programs)
    orders = balanced_orders(len(names))
    r = 0
    while r < repeats or (r < max_rounds and min(map(sum, times.values())) < min_seconds):
        for m in (names[i] for i in orders[r % len(orders)]):
            t = time.perf_counter()
            programs[m](x, params).block_until_ready()
            times[m].append(time.perf_counter() - t)
        r += 1
    return {m: {"run_s_median": statistics.median(ts), "run_s_min": min(ts), "runs": len(ts)}
            for m, ts in times.items()}


def _ranking(values: dict) -> list[str]:
    return sorted(values, key=values.get)


def run(models, methods, n, outputs, traces, repeats, log=print):
    ceiling = matmul_gflops()
    log(f"ntkc {ntkc.__version__}, JAX {jax.__version__}, {jax.devices()[0].device_kind} "
        f"({platform.machine()}), dense f32 matmul {ceiling:.1f} GFLOP/s")
    rows = []
    for name in models:
        size = n or DEFAULT_N[name]
        f, params, x = MODELS[name](n=size, outputs=outputs)
        n_params = sum(l.size for l in jax.tree.leaves(params))
        for trace_axes in traces:
            predicted = _api.estimate_methods(f, x, None, params, trace_axes=trace_axes, vmap_axes=0)
            case = f"{name} (P={n_params:,}, N={size}, O={outputs}) trace_axes={trace_axes}"
            log(f"\n{case}")
            log(f"{'method':<12}{'resolved':<12}{'trace s':>9}{'compile s':>11}{'median s':>11}"
                f"{'min s':>10}{'peak MiB':>10}{'GFLOP/s':>9}{'% peak':>8}{'rel err':>10}")
            reference = None
            results, programs, thetas = {}, {}, {}
            for method in methods:
                try:
                    programs[method], thetas[method], results[method] = compile_case(
                        f, params, x, method, trace_axes)
                except Exception as err:  # a failing method is a result too
                    log(f"{method:<12}failed: {type(err).__name__}: {str(err)[:120]}")
                    rows.append({"model": name, "trace_axes": list(trace_axes), "method": method,
                                 "error": f"{type(err).__name__}: {err}"})
            timings = time_interleaved(programs, x, params, repeats)
            for method, r in results.items():
                theta = thetas[method]
                r.update(timings[method])
                if reference is None and method == "jacobian":
                    reference = np.asarray(theta, np.float64)
                if reference is not None:
                    scale = float(np.max(np.abs(reference))) or 1.0
                    r["rel_err_vs_jacobian"] = float(np.max(np.abs(np.asarray(theta) - reference))) / scale
                gflops = (r["xla_flops"] or 0) / r["run_s_median"] / 1e9
                r.update(model=name, trace_axes=list(trace_axes), n=size, outputs=outputs,
                         params=n_params, gflops=gflops, percent_of_matmul=100 * gflops / ceiling)
                rows.append(r)
                peak = (r["peak_bytes"] or 0) / 2**20
                err = r.get("rel_err_vs_jacobian", float("nan"))
                log(f"{method:<12}{r['resolved']:<12}{r['trace_s']:>9.2f}{r['compile_s']:>11.2f}"
                    f"{r['run_s_median']:>11.4f}{r['run_s_min']:>10.4f}{peak:>10.1f}{gflops:>9.1f}"
                    f"{r['percent_of_matmul']:>7.0f}%{err:>10.1e}")
            fixed = {m: results[m]["run_s_median"] for m in ("jacobian", "ntvp", "structured") if m in results}
            if fixed:
                measured = _ranking(fixed)
                model_rank = [m for m in _ranking(predicted) if m in fixed]
                line = f"measured ranking {measured}, cost model {model_rank}"
                if "auto" in results:
                    best = min(fixed.values())
                    line += (f"; auto/fastest = {results['auto']['run_s_median'] / best:.2f}"
                             f" (auto ran {results['auto']['resolved']})")
                log(line)
                rows.append({"model": name, "trace_axes": list(trace_axes), "summary": True,
                             "measured_ranking": measured, "predicted_ranking": model_rank,
                             "predicted_flops": predicted})
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "ntkc": ntkc.__version__,
        "device": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "matmul_gflops": ceiling,
        "rows": rows,
    }


def _list(text, valid):
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; valid: {', '.join(valid)}")
    return items


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ntkc bench", description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=lambda t: _list(t, list(MODELS)), default=list(MODELS),
                    help=f"comma-separated models to run (default: all of {','.join(MODELS)})")
    ap.add_argument("--methods", type=lambda t: _list(t, METHODS), default=list(METHODS),
                    help=f"comma-separated methods to time (default: all of {','.join(METHODS)})")
    ap.add_argument("--n", type=int, default=None, help="examples (default: per model)")
    ap.add_argument("--outputs", type=int, default=10,
                    help="outputs O of each model, the logits (default: 10)")
    ap.add_argument("--trace", choices=("both", "traced", "untraced"), default="both",
                    help="trace_axes=(-1,) (traced), () (untraced), or both (default)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed runs of each method, interleaved round by round (default: 5)")
    ap.add_argument("--json", default=None, help="where to write the results (default: bench/results/)")
    ap.add_argument("--suite", choices=("default", "paper"), default="default",
                    help="default: this suite's small models; paper: the paper's cases at their "
                         "scale, Flax ResNet-18/50 and ViT-S/16 on 224x224, WRN-28-10, the "
                         "3x2048 FCN, under memory_limit (bench/paper.py; --suite paper --help "
                         "for its options)")
    ap.add_argument("--scaling", action="store_true",
                    help="instead: time each method on the MLP as width and N grow (bench/scaling.py; "
                         "--scaling --help for its options)")
    return ap


def _suite(argv: list) -> tuple[str, list]:
    """The value of ``--suite`` (``--suite X`` or ``--suite=X``; "default" when absent) and the
    other arguments."""
    rest, suite, i = [], "default", 0
    while i < len(argv):
        if argv[i] == "--suite" and i + 1 < len(argv):
            suite, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--suite="):
            suite = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return suite, rest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    suite, rest = _suite(argv)
    if suite == "paper":  # the paper's suite parses its own options
        from bench import paper

        return paper.main(rest)
    if suite != "default":
        parser().error(f"argument --suite: invalid choice: {suite!r} (choose from 'default', "
                       "'paper')")
    argv = rest
    if "--scaling" in argv:  # the scaling sweep parses its own options
        from bench import scaling

        return scaling.main([a for a in argv if a != "--scaling"])
    args = parser().parse_args(argv)
    traces = {"both": [(), (-1,)], "traced": [(-1,)], "untraced": [()]}[args.trace]
    report = run(args.models, args.methods, args.n, args.outputs, traces, max(args.repeats, 1))
    path = pathlib.Path(args.json) if args.json else (
        pathlib.Path(__file__).parent / "results" /
        f"{report['device'].replace(' ', '_')}-jax{report['jax']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return 0
