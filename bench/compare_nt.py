"""ntkc against neural-tangents 0.6.5, on the same JAX, with the same models, weights and inputs.

    python bench/compare_nt.py [--models mlp,cnn] [--quick] [--rounds 2] [--repeats 5]
                               [--trace both|traced|untraced] [--x2 none|given|both]
                               [--methods structured,auto] [--nt-methods structured,jacobian]
                               [--no-old-jax] [--no-nt-auto] [--worktree] [--tag NAME] [--setup-only]
    python bench/compare_nt.py --suite paper [--models fcn,resnet18_8x8,wrn28_10] [...]

Creates, when missing, three virtual environments in the checkout (git-ignored, ``/.venv*/``):

- ``.venv-nt-jax092``:  jax/jaxlib 0.9.2 + neural-tangents 0.6.5 (``--no-deps``) + frozendict;
- ``.venv-nt-jax0425``: jax/jaxlib 0.4.25 (numpy < 2, scipy < 1.13) + the same neural-tangents;
- ``.venv-jax092``:     jax/jaxlib 0.9.2 + ntkc, editable, as the CI creates it (``.ci/run``).

Both JAX 0.9.2 environments also get Flax 0.12.6 (``FLAX``: the newest release whose requirements
admit JAX 0.9.2; flax 0.12.8 wants JAX >= 0.10), with optax and orbax-checkpoint pinned and JAX
pinned in the same pip command, so that pip cannot move it, for the paper's Flax Linen models.

neural-tangents is imported through ``bench/_nt_shim.py`` (a stub for its TensorFlow port and,
on JAX 0.9.2, aliases for the JAX internals it imports that moved). Neither neural-tangents nor
the old JAX is ever installed next to ntkc.

The workers run ``ntkc/`` and ``bench/`` as committed at git HEAD (exported to a temporary folder),
so uncommitted edits in a shared checkout do not leak in; ``--rev`` names another commit for
``ntkc/`` (several runs measuring one), ``--bench-rev`` for ``bench/`` (default HEAD: the newest
harness), ``--worktree`` runs the working tree.

Two suites. ``--suite small`` (the default): the plain-JAX models of ``bench/models.py``.
``--suite paper``: the paper's cases of ``bench/paper.py`` (``CASES``: ``fcn``, ``resnet18_8x8``,
``wrn28_10``, ...), built by ``bench/paper_models.py`` (Flax Linen, BatchNorm in eval mode), each at
its own N and O unless ``--n`` / ``--outputs`` are given. Each case runs with ``x2=None`` and/or a
distinct ``x2`` (``--x2``; default: ``none`` for the small suite, ``both`` for the paper's): a
cross kernel Θ(x1, x2) needs the cotangent passes of both sides, ``x2=None`` of one.

Each case (model x trace_axes x x2) runs, per round, one worker process per library, the two libraries
back to back and their order alternating between rounds, so that drift of this shared machine
falls on both. A worker builds the model from ``bench/models.py`` (numpy-seeded weights and
inputs), then per method: trace + lower seconds, XLA compile seconds, one call, then ``--repeats``
timed calls; peak memory is XLA's memory analysis of the compiled kernel (arguments + outputs +
temporaries; JAX 0.4.25's CPU client reports none). The kernels of the first round are compared:
ntkc's method against neural-tangents' same implementation, ntkc auto against neural-tangents'
fastest implementation on that case.

Memory. A compiled program whose XLA memory analysis exceeds ``--max-gib`` (default 14) is not run:
the method reports "does not fit: needs X GiB". ``--memory-limit-gib`` is ntkc's
``memory_limit``: where the whole kernel does not fit, ntkc computes it in blocks of examples or
chunks of outputs, several programs called as a user calls them (compile s = first call less the
fastest run; memory: the process's peak RSS, as no one program's analysis covers it). A worker
that XLA cannot allocate for, that the kernel kills (SIGKILL, the OOM killer), that times out
(``--timeout``) or that fails otherwise reports it per method ("out of memory", "timed out ...")
and keeps the methods it finished; the run goes on.

Ratios are ntkc / neural-tangents on JAX 0.9.2: compile (trace + lower + compile), median run,
peak memory. neural-tangents on JAX 0.4.25 is shown beside them, for reference only.
Writes ``bench/results/compare-nt-<tag>.json`` and ``.log``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (and in the workers): make `bench` importable
    sys.path.insert(0, str(ROOT))
from bench import _compare  # noqa: E402
from bench._compare import fmt as _fmt, rel_dev as _rel_dev, ratio as _ratio  # noqa: E402

REQUIRED = ("compare_nt.py",)  # checked to be committed by export_source
WATCHED = ("ntkc", "bench/models.py", "bench/paper_models.py",
           "bench/_nt_shim.py", "bench/compare_nt.py", "bench/_compare.py")

DEFAULT_N = {"mlp": 32, "cnn": 16, "wrn": 8, "vit": 8, "mixer": 8}
QUICK_N = {"mlp": 8, "cnn": 4, "wrn": 2, "vit": 2, "mixer": 2}
MODEL_NAMES = ("mlp", "cnn", "wrn", "vit", "mixer")

# ntkc method <-> neural-tangents implementation (NtkImplementation: 0 AUTO, 1 JACOBIAN_CONTRACTION,
# 2 NTK_VECTOR_PRODUCTS, 3 STRUCTURED_DERIVATIVES).
NT_IMPL = {"jacobian": 1, "ntvp": 2, "structured": 3, "auto": 0}
FIXED = ("jacobian", "ntvp", "structured")
NTKC_METHODS = ("jacobian", "ntvp", "structured", "auto")

PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
NT = "neural-tangents==0.6.5"
# Flax for the paper's models (bench/paper_models.py), with JAX pinned in the same command.
FLAX = ["jax==0.9.2", "jaxlib==0.9.2", "flax==0.12.6", "optax==0.2.8", "orbax-checkpoint==0.12.8"]

# name -> (folder, library, JAX version, pip install commands)
ENVS = {
    "nt-0.9.2": (".venv-nt-jax092", "nt", "0.9.2", [
        ["jax==0.9.2", "jaxlib==0.9.2", "frozendict"],
        ["--no-deps", NT],
        FLAX,
    ]),
    "ntkc-0.9.2": (".venv-jax092", "ntkc", "0.9.2", [  # the CI's oldest-JAX environment
        ["jax==0.9.2", "jaxlib==0.9.2"],
        ["--no-deps", "-e", str(ROOT)],
        "ntkc's other dependencies",  # read from pyproject.toml
        FLAX,
    ]),
    "nt-0.4.25": (".venv-nt-jax0425", "nt", "0.4.25", [
        # jaxlib 0.4.25 is built against numpy 1; jax < 0.4.26 breaks on scipy 1.13.
        ["jax==0.4.25", "jaxlib==0.4.25", "numpy<2", "scipy<1.13", "frozendict"],
        ["--no-deps", NT],
    ]),
}

_CHECK = """
import importlib.metadata, importlib.util, sys, jax
assert jax.__version__ == sys.argv[1], jax.__version__
if sys.argv[2] == "nt":
    assert importlib.util.find_spec("neural_tangents") is not None
if sys.argv[1] == "0.9.2":
    import flax.linen  # the paper's models
for name in sys.argv[3:]:
    importlib.metadata.version(name)  # raises if missing
"""


def ntkc_dependencies() -> list[str]:
    """ntkc's runtime dependencies from pyproject.toml, JAX excluded (pinned per environment)."""
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0] not in ("jax", "jaxlib")]


def _dist_name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0]


def _python(folder: str) -> pathlib.Path:
    return ROOT / folder / "bin" / "python"


def setup_env(name: str, log) -> None:
    """Create the environment if it is missing or incomplete."""
    folder, lib, jax_version, installs = ENVS[name]
    py = _python(folder)
    deps = ntkc_dependencies() if lib == "ntkc" else []
    names = ["ntkc", *map(_dist_name, deps)] if lib == "ntkc" else ["neural-tangents", "frozendict"]
    check = [str(py), "-c", _CHECK, jax_version, lib, *names]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    log(f"setting up {folder} ({lib} on JAX {jax_version}) ...")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROOT / folder)], check=True)
    for args in installs:
        subprocess.run([str(py), *PIP, *(deps if isinstance(args, str) else args)], check=True)
    done = subprocess.run(check, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{folder} is not usable after setup:\n{done.stderr}")


def env_versions(name: str) -> dict:
    folder = ENVS[name][0]
    out = subprocess.run([str(_python(folder)), "-m", "pip", "list", "--format=json",
                          "--disable-pip-version-check"], capture_output=True, text=True)
    wanted = {"jax", "jaxlib", "numpy", "scipy", "ml-dtypes", "ml_dtypes", "neural-tangents",
              "frozendict", "ntkc", "opt-einsum", "opt_einsum", "networkx", "flax"}
    try:
        return {p["name"]: p["version"] for p in json.loads(out.stdout) if p["name"].lower() in wanted}
    except json.JSONDecodeError:
        return {}


# ----------------------------------------------------------------------------------------------
# Worker: runs inside one of the environments; imports jax, the library and bench.models only.


def _peak_bytes(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every client implements it
        return None
    if m is None:
        return None
    total = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    return total or None  # JAX 0.4.25's CPU client reports all zeros


def _flops(compiled):
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return None if value is None else float(value)


def build(spec: dict):
    """``(f, params, x1, x2)`` of a worker's spec, x2 None unless ``spec["x2"]``. A paper case
    (``spec["factory"]``) comes from ``bench/paper_models.py`` with ``spec["kwargs"]``; a small
    model from ``bench/models.py``, its x2 the inputs of the same factory with seed 1."""
    if spec.get("factory"):
        from bench import paper_models

        f, params, x1, x2 = paper_models.MODELS[spec["factory"]](**spec["kwargs"])
    else:
        from bench.models import MODELS

        factory = MODELS[spec["model"]]
        f, params, x1 = factory(n=spec["n"], outputs=spec["outputs"])
        x2 = factory(n=spec["n"], outputs=spec["outputs"], seed=1)[2] if spec.get("x2") else None
    return f, params, x1, (x2 if spec.get("x2") else None)


def lower(jax, kernel_fn, x1, x2, params, compiler_options=None):
    """The kernel's program lowered for ``(x1, x2, params)``, and the arguments it is called with:
    ``x2`` None is static (the symmetric kernel's program), else an argument."""
    jitted = jax.jit((lambda a, p: kernel_fn(a, None, p)) if x2 is None else kernel_fn,
                     compiler_options=compiler_options or None)
    args = (x1, params) if x2 is None else (x1, x2, params)
    return jitted.lower(*args), args


def worker(spec_path: str, out_path: str) -> int:
    spec = json.loads(pathlib.Path(spec_path).read_text())
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    info = {"jax": jax.__version__, "device": jax.devices()[0].device_kind, "load_start": os.getloadavg(),
            "memory_limit": spec.get("memory_limit")}
    if spec["lib"] == "nt":
        from bench import _nt_shim

        nt = _nt_shim.import_nt()
        info.update(library="neural-tangents", version=nt.__version__, aliases=_nt_shim.ALIASES_APPLIED)

        def make(f, method, trace_axes):
            kernel_fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0,
                                            implementation=NT_IMPL[method])
            return kernel_fn, None, None
    else:
        import ntkc

        info.update(library="ntkc", version=ntkc.__version__, file=ntkc.__file__)

        def make(f, method, trace_axes):
            kernel_fn = ntkc.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, method=method,
                                    memory_limit=spec.get("memory_limit"))
            return kernel_fn, kernel_fn.prepare, kernel_fn.compiler_options

    # One-time XLA start-up, so that it is charged to no method.
    a = jnp.ones((64, 64), jnp.float32)
    jax.jit(lambda a: jnp.tanh(a @ a).sum()).lower(a).compile()(a).block_until_ready()

    f, params, x, x2 = build(spec)
    info["params"] = int(sum(np.size(l) for l in jax.tree_util.tree_leaves(params)))
    trace_axes = tuple(spec["trace_axes"])
    results = []
    for method in spec["methods"]:
        r = {"method": method}
        try:
            kernel_fn, prepare, options = make(f, method, trace_axes)
            start = time.perf_counter()
            if prepare is not None:
                config, _ = prepare(x, x2, params)
                r["resolved"] = config.method
                if config.block or config.chunk:  # split under memory_limit: several programs
                    r.update(_run_split(jax, np, kernel_fn, config, x, x2, params, spec, start))
                    if spec.get("kernel_path"):
                        np.save(spec["kernel_path"].format(method=method), r.pop("theta"))
                    r.pop("theta", None)
                    results.append(r)
                    pathlib.Path(out_path).write_text(
                        json.dumps(dict(info, results=results, partial=True)))
                    continue
            # ntkc's own XLA options (none on JAX 0.9.2, where they are XLA's defaults)
            jit_options = options(x, x2, params) if options else None
            lowered, args = lower(jax, kernel_fn, x, x2, params, jit_options)
            r["trace_s"] = time.perf_counter() - start
            start = time.perf_counter()
            compiled = lowered.compile()
            r["compile_s"] = time.perf_counter() - start
            r["peak_bytes"] = _peak_bytes(compiled)
            limit = spec.get("max_bytes")
            if limit and r["peak_bytes"] and r["peak_bytes"] > limit:
                raise MemoryError(f"not run: XLA's memory analysis of the compiled program says "
                                  f"{r['peak_bytes'] / 2**30:.1f} GiB, over the limit of "
                                  f"{limit / 2**30:.1f} GiB (--max-gib)")
            theta = compiled(*args)
            theta.block_until_ready()
            times = []
            for _ in range(spec["repeats"]):
                t = time.perf_counter()
                compiled(*args).block_until_ready()
                times.append(time.perf_counter() - t)
            r.update(run_s=times, xla_flops=_flops(compiled))
            if spec.get("kernel_path"):
                np.save(spec["kernel_path"].format(method=method), np.asarray(theta))
            del compiled, lowered, theta
        except Exception as err:  # noqa: BLE001 - a failing method is a result too
            r["error"] = f"{type(err).__name__}: {err}"
        results.append(r)
        # What is done so far, in case the process dies in the next method (killed for memory).
        pathlib.Path(out_path).write_text(json.dumps(dict(info, results=results, partial=True)))
    info["load_end"] = os.getloadavg()
    info["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["results"] = results
    pathlib.Path(out_path).write_text(json.dumps(info))
    return 0


def _run_split(jax, np, kernel_fn, config, x, x2, params, spec, start) -> dict:
    """ntkc's kernel under ``memory_limit`` in blocks of examples or chunks of outputs: several
    programs, each compiled on the first call, so it is called as the user calls it (not inside
    one jit). ``trace_s``: planning (``prepare``); ``compile_s``: the first call less the median
    run; no XLA memory analysis of one program: ``rss_mib``, the process's peak RSS so far."""
    import resource

    out = {"split": (f"{config.method}: blocks of {config.block} examples" if config.block else
                     f"{config.method}: chunks of {config.chunk[1]} outputs along output axis "
                     f"{config.chunk[0]}"), "peak_bytes": None}
    out["trace_s"] = time.perf_counter() - start
    t = time.perf_counter()
    theta = jax.block_until_ready(kernel_fn(x, x2, params))
    out["first_call_s"] = time.perf_counter() - t
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        jax.block_until_ready(kernel_fn(x, x2, params))
        times.append(time.perf_counter() - t)
    out.update(run_s=times, compile_s=max(out["first_call_s"] - min(times), 0.0), xla_flops=None,
               rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               theta=np.asarray(theta))
    return out


# ----------------------------------------------------------------------------------------------
# Driver.


def run_worker(env: str, spec: dict, tmp: pathlib.Path, timeout: float, src: pathlib.Path) -> dict:
    folder = ENVS[env][0]
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    envvars = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="3")
    envvars.pop("PYTHONPATH", None)
    load = os.getloadavg()  # as `uptime` shows it, when the worker starts
    start = time.perf_counter()
    try:
        done = subprocess.run([str(_python(folder)), str(src / "bench" / "compare_nt.py"), "--worker",
                               str(spec_path), str(out_path)], capture_output=True, text=True,
                              timeout=timeout, env=envvars, cwd=str(src))
        error = None
        if done.returncode or not out_path.exists():
            signal = f" (signal {-done.returncode}: killed)" if done.returncode < 0 else ""
            error = (f"worker exited with {done.returncode}{signal}:\n"
                     + (done.stderr or done.stdout)[-3000:])
    except subprocess.TimeoutExpired:
        error = f"worker timed out after {timeout:.0f} s"
    wall = time.perf_counter() - start
    try:  # what the worker wrote: all its methods, or those done before it died or timed out
        out = json.loads(out_path.read_text()) if out_path.exists() else {"results": []}
    except (OSError, json.JSONDecodeError):
        out = {"results": []}
    # The methods not done get the worker's error; partial: one method's results written so far.
    out.update({"wall_s": wall, "load_before": load}, **({"error": error} if error else {}))
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: dict) -> dict:
    """runs: method -> list of per-round results -> one summary per method."""
    out = {}
    for method, rounds in runs.items():
        ok = [r for r in rounds if "error" not in r]
        if not ok:
            out[method] = {"error": rounds[0].get("error", "no result") if rounds else "not run"}
            continue
        times = [t for r in ok for t in r["run_s"]]
        out[method] = {
            "rounds": len(ok),
            "runs": len(times),
            "trace_s": _median([r["trace_s"] for r in ok]),
            "compile_s": _median([r["compile_s"] for r in ok]),
            "total_compile_s": _median([r["trace_s"] + r["compile_s"] for r in ok]),
            "run_s_median": statistics.median(times),
            "run_s_min": min(times),
            "round_medians": [statistics.median(r["run_s"]) for r in ok],
            "peak_bytes": ok[0].get("peak_bytes"),
            "xla_flops": ok[0].get("xla_flops"),
        }
        if ok[0].get("resolved"):
            out[method]["resolved"] = ok[0]["resolved"]
        if ok[0].get("split"):  # several programs under memory_limit: no one memory analysis
            out[method].update(split=ok[0]["split"],
                               first_call_s=_median([r["first_call_s"] for r in ok]),
                               rss_mib=max(r["rss_mib"] for r in ok))
        if len(ok) < len(rounds):
            out[method]["errors_in_other_rounds"] = [r["error"] for r in rounds if "error" in r]
    return out


def _mib(b):
    return None if b is None else b / 2**20


def case_table(case: dict, log) -> None:
    nt, kc, old = case["nt-0.9.2"], case["ntkc-0.9.2"], case.get("nt-0.4.25")
    head = (f"{'':<18}|{'neural-tangents, JAX 0.9.2':^32}|{'ntkc, JAX 0.9.2':^32}|{'ntkc / NT':^23}|"
            f"{'rel dev':>8} |{'NT, JAX 0.4.25':^22}")
    sub = (f"{'ntkc vs NT impl':<18}|{'compile s':>10}{'median s':>11}{'peak MiB':>11}|"
           f"{'compile s':>10}{'median s':>11}{'peak MiB':>11}|{'compile':>8}{'run':>7}{'memory':>8}|"
           f"{'':>8} |{'compile s':>10}{'median s':>11} ")
    log(head)
    log(sub)

    def cols(s):
        if s is None:
            return f"{'':>32}"
        if "error" in s:
            return f"{_compare.status(s['error'])[:31]:>32}"
        return (f"{_fmt(s['total_compile_s'], '>10.2f')}{_fmt(s['run_s_median'], '>11.4f')}"
                f"{_fmt(_mib(s['peak_bytes']), '>11.1f')}")

    def ratios(a, b):
        if a is None or b is None or "error" in a or "error" in b:
            return f"{'-':>8}{'-':>7}{'-':>8}"
        return (f"{_fmt(_ratio(a['total_compile_s'], b['total_compile_s']), '>8.2f')}"
                f"{_fmt(_ratio(a['run_s_median'], b['run_s_median']), '>7.2f')}"
                f"{_fmt(_ratio(a['peak_bytes'], b['peak_bytes']), '>8.2f')}")

    def old_cols(s):
        if s is None:
            return ""
        if "error" in s:
            return f"{_compare.status(s['error'])[:21]:>21}"
        return f"{_fmt(s['total_compile_s'], '>10.2f')}{_fmt(s['run_s_median'], '>11.4f')}"

    for m in ("jacobian", "ntvp", "structured", "auto"):
        label = f"{m} / {NT_IMPL[m]}" + (" AUTO" if m == "auto" else "")
        a, b = kc.get(m), nt.get(m)
        o = old.get(m) if old else None
        if a is None and b is None:
            continue
        dev = case["agreement"].get(m)
        log(f"{label:<18}|{cols(b)}|{cols(a)}|{ratios(a, b)}|{_fmt(dev, '>8.1e')} |{old_cols(o)}")
    best = case.get("nt_fastest")
    if best:
        a, b = kc.get("auto"), nt[best]
        ran = (a or {}).get("resolved", "?")
        label = f"auto vs {best}"
        log(f"{label:<18}|{cols(b)}|{cols(a)}|{ratios(a, b)}|{_fmt(case['agreement'].get('auto_vs_fastest'), '>8.1e')} |"
            f"  (NT's fastest; ntkc auto ran {ran})")
    for env, lib in (("nt-0.9.2", "neural-tangents 0.9.2"), ("ntkc-0.9.2", "ntkc 0.9.2"),
                     ("nt-0.4.25", "neural-tangents 0.4.25")):
        for m, s in (case.get(env) or {}).items():
            if "error" in s:
                first = s["error"].strip().splitlines()
                log(f"  {lib} {m}: {_compare.status(s['error'])}: {' '.join(first[:3])[:300]}")
            elif s.get("split"):
                log(f"  {lib} {m}: {s['split']} (peak MiB: none of one program; the process's "
                    f"peak RSS {s['rss_mib']:.0f} MiB; compile s = first call "
                    f"{s['first_call_s']:.1f} s less the fastest run)")


def summary_table(cases: list, log) -> None:
    """One line per case: ntkc / neural-tangents median run time per method, and for auto against
    neural-tangents' fastest implementation, its compile and memory ratios."""
    log()
    log("Summary, ntkc / neural-tangents on JAX 0.9.2 (< 1: ntkc better). run = median run time "
        "((min): fastest run, less sensitive to other load); compile = trace + lower + compile")
    log(f"{'case':<40}{'jacobian':>9}{'ntvp':>7}{'struct.':>8}{'auto/AUTO':>10}  "
        f"{'auto / NT fastest: run':>22}{'(min)':>7}{'compile':>9}{'memory':>8}{'max memory, all':>17}")
    for case in cases:
        r = case["ratios_ntkc_over_nt"]
        name = case_name(case)
        run = lambda m: _fmt((r.get(m) or {}).get("run"), ">.2f")  # noqa: E731
        best = case.get("nt_fastest")
        fastest = r.get(f"auto_vs_nt_fastest_{best}", {})
        mems = [v["memory"] for v in r.values() if v.get("memory") is not None]
        best_label = f"({best}) {_fmt(fastest.get('run'), '.2f')}" if best else "-"
        log(f"{name:<40}{run('jacobian'):>9}{run('ntvp'):>7}{run('structured'):>8}{run('auto'):>10}  "
            f"{best_label:>22}{_fmt(fastest.get('run_min'), '>7.2f')}{_fmt(fastest.get('compile'), '>9.2f')}{_fmt(fastest.get('memory'), '>8.2f')}"
            f"{_fmt(max(mems) if mems else None, '>17.2f')}")


SUITE_MODELS = {"small": "mlp,cnn,wrn,vit,mixer", "paper": "fcn,resnet18_8x8,wrn28_10"}


def paper_cases() -> dict:
    """The paper's cases: name -> (factory in bench/paper_models.py, its keyword arguments)."""
    from bench.paper import CASES

    return CASES


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("small", "paper"), default="small",
                    help="small: bench/models.py; paper: the paper's cases of bench/paper.py")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated; small suite: from {','.join(MODEL_NAMES)} (default all); "
                         f"paper suite: case names of bench/paper.py (default {SUITE_MODELS['paper']})")
    ap.add_argument("--quick", action="store_true", help=f"small suite, small N: {QUICK_N}")
    ap.add_argument("--n", type=int, default=None, help="examples for every model (default: per model)")
    ap.add_argument("--outputs", type=int, default=None,
                    help="outputs O (default: 10 in the small suite, the case's own in the paper's)")
    ap.add_argument("--trace", choices=("both", "traced", "untraced"), default="both")
    ap.add_argument("--x2", choices=("none", "given", "both"), default=None,
                    help="x2=None, a distinct x2 (the cross kernel), or both "
                         "(default: none in the small suite, both in the paper's)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each running every case once per library")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per method per round (small suite: >= 5, default 5; paper: default 3)")
    ap.add_argument("--methods", default=",".join(NTKC_METHODS),
                    help="comma-separated subset of jacobian,ntvp,structured,auto, in the order run "
                         "(both libraries, unless --nt-methods)")
    ap.add_argument("--nt-methods", default=None,
                    help="neural-tangents' methods, if not those of --methods (auto: its AUTO)")
    ap.add_argument("--no-old-jax", action="store_true", help="skip neural-tangents on JAX 0.4.25")
    ap.add_argument("--nt-auto", action=argparse.BooleanOptionalAction, default=True,
                    help="also time neural-tangents' AUTO (compiles its three programs to count FLOPs)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    ap.add_argument("--max-gib", type=float, default=14,
                    help="a compiled program whose XLA memory analysis exceeds this is not run "
                         "(reported as an error); 0: no limit")
    ap.add_argument("--memory-limit-gib", type=float, default=0,
                    help="ntkc's memory_limit (GiB): where the whole kernel does not fit, ntkc "
                         "computes it in blocks of examples or chunks of outputs (several "
                         "programs, called as the user calls them); 0: none (default)")
    ap.add_argument("--tag", default=None, help="output name: bench/results/compare-nt-TAG.{json,log}")
    ap.add_argument("--results-dir", default=None, help="where to write them (default bench/results)")
    ap.add_argument("--worktree", action="store_true",
                    help="run ntkc and bench/ from the working tree instead of git HEAD")
    ap.add_argument("--rev", default="HEAD",
                    help="the commit whose ntkc/ and bench/ the workers run (default HEAD)")
    ap.add_argument("--bench-rev", default="HEAD",
                    help="the commit whose bench/ (this harness, the models) the workers run "
                         "(default HEAD; --rev names ntkc's)")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return ap


def select_cases(args, error) -> list[dict]:
    """The cases of parsed ``args``, in the order run: per model, per trace_axes, x2=None before a
    distinct x2. Each: model (its name), n, outputs, trace_axes (a list), x2 (bool) and, for a
    paper case, factory and kwargs (for ``bench/paper_models.py``). ``error(message)`` is called
    for an unknown model."""
    models = [m for m in (args.models or SUITE_MODELS[args.suite]).split(",") if m]
    valid = MODEL_NAMES if args.suite == "small" else tuple(paper_cases())
    bad = [m for m in models if m not in valid]
    if bad:
        error(f"unknown models {bad} in the {args.suite} suite; valid: {', '.join(valid)}")
    traces = {"both": [[], [-1]], "traced": [[-1]], "untraced": [[]]}[args.trace]
    x2 = args.x2 or ("none" if args.suite == "small" else "both")
    x2s = {"none": [False], "given": [True], "both": [False, True]}[x2]
    cases = []
    for m in models:
        if args.suite == "small":
            base = {"model": m, "n": args.n or (QUICK_N if args.quick else DEFAULT_N)[m],
                    "outputs": args.outputs or 10}
        else:
            factory, kwargs = paper_cases()[m]
            kwargs = dict(kwargs)
            kwargs.update({k: v for k, v in (("n", args.n), ("outputs", args.outputs)) if v})
            base = {"model": m, "n": kwargs["n"], "outputs": kwargs["outputs"],
                    "factory": factory, "kwargs": kwargs}
        cases += [dict(base, trace_axes=t, x2=given) for t in traces for given in x2s]
    return cases


def case_key(case: dict) -> tuple:
    return case["model"], tuple(case["trace_axes"]), bool(case["x2"])


def case_name(case: dict) -> str:
    return (f"{case['model']} N={case['n']} O={case['outputs']} "
            f"{'traced' if case['trace_axes'] else 'untraced'} {'x2' if case['x2'] else 'x2=None'}")


def method_lists(args, error) -> dict:
    """env -> the methods its workers run, in the order given."""
    chosen = [m for m in args.methods.split(",") if m]
    nt_chosen = [m for m in (args.nt_methods or args.methods).split(",") if m]
    if any(m not in NTKC_METHODS for m in chosen + nt_chosen):
        error(f"unknown methods in {chosen + nt_chosen}; valid: {', '.join(NTKC_METHODS)}")
    nt_methods = [m for m in nt_chosen if m != "auto" or args.nt_auto]
    return {"nt-0.9.2": nt_methods, "ntkc-0.9.2": chosen, "nt-0.4.25": nt_methods}


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    cases = select_cases(args, ap.error)
    methods = method_lists(args, ap.error)
    nt_methods = methods["nt-0.9.2"]
    envs = ["nt-0.9.2", "ntkc-0.9.2"] + ([] if args.no_old_jax else ["nt-0.4.25"])
    tag = args.tag or ("paper-" if args.suite == "paper" else "") + f"cpu-{os.cpu_count()}core" + (
        "-quick" if args.quick else "")
    results_dir = pathlib.Path(args.results_dir) if args.results_dir else ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / f"compare-nt-{tag}.log"
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    for env in envs:
        setup_env(env, log)
    versions = {env: env_versions(env) for env in envs}
    if args.setup_only:
        print(json.dumps(versions, indent=1))
        return 0

    # The small suite's cases take milliseconds: at least 5 timed runs. The paper's take seconds
    # to minutes per call: as many as asked (default 3), at least 1.
    repeats = max(args.repeats or 5, 5) if args.suite == "small" else max(args.repeats or 3, 1)
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"ntkc vs neural-tangents 0.6.5, {started.isoformat(timespec='seconds')}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for env in envs:
        log(f"  {ENVS[env][0]}: " + ", ".join(f"{k} {v}" for k, v in sorted(versions[env].items())))
    log(f"{args.suite} suite, float32, vmap_axes=0; {args.rounds} rounds x {repeats} timed runs per "
        f"method (after one untimed call), libraries alternating; compile = trace + lower + XLA compile")
    log(f"methods: ntkc {','.join(methods['ntkc-0.9.2'])}; neural-tangents {','.join(nt_methods)}")
    log(f"a program whose XLA memory analysis exceeds {args.max_gib:g} GiB is not run (--max-gib); "
        f"ntkc's memory_limit: " + (f"{args.memory_limit_gib:g} GiB" if args.memory_limit_gib
                                    else "none"))
    raw = {}
    workers = {}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="compare-nt-"))
    try:
        if args.worktree:
            src, source = ROOT, _compare.source_info(ROOT, WATCHED)
        else:
            src = tmp / "src"
            source = _compare.export_source(src, REQUIRED, WATCHED, args.rev, args.bench_rev)
        log(f"ntkc and bench/ from {source['source']} {source['commit'][:10]}"
            + (f" (bench/ from {source['bench_commit'][:10]})" if source.get("bench_commit") else "")
            + (" (with uncommitted changes)" if source["uncommitted_changes_in_worktree"] and src == ROOT
               else ""))
        for rnd in range(args.rounds):
            for i, case in enumerate(cases):
                key = case_key(case)
                # The pair compared runs back to back, in the order flipped every round and case;
                # neural-tangents on the old JAX (reference only) runs after them.
                pair = ["nt-0.9.2", "ntkc-0.9.2"][:: 1 if (rnd + i) % 2 == 0 else -1]
                order = pair + envs[2:]
                for env in order:
                    kpath = None
                    if rnd == 0:
                        kpath = str(tmp / f"{env}-{_file_key(case)}-{{method}}.npy")
                    spec = dict(case, lib=ENVS[env][1], methods=methods[env], repeats=repeats,
                                kernel_path=kpath, max_bytes=int(args.max_gib * 2**30) or None,
                                memory_limit=int(args.memory_limit_gib * 2**30) or None)
                    out = run_worker(env, spec, tmp, args.timeout, src)
                    workers.setdefault(key, {}).setdefault(env, []).append(
                        {k: v for k, v in out.items() if k != "results"})
                    per = raw.setdefault(key, {}).setdefault(env, {})
                    for m in methods[env]:
                        r = next((r for r in out.get("results", []) if r["method"] == m), None)
                        per.setdefault(m, []).append(r or {"method": m, "error": out.get("error", "no result")})
                    statuses = ", ".join(f"{m} {_compare.status(per[m][-1].get('error'))}"
                                         for m in methods[env])
                    print(f"  round {rnd + 1}/{args.rounds} {case_name(case)} "
                          f"{env}: {out.get('wall_s', 0):.0f} s, load {out['load_before'][0]:.2f} "
                          f"at start; {statuses}", flush=True)

        report_cases = []
        for chosen in cases:
            key = case_key(chosen)
            case = {k: chosen[k] for k in ("model", "n", "outputs", "trace_axes", "x2")}
            if chosen.get("kwargs"):
                case["kwargs"] = chosen["kwargs"]
            for env in envs:
                case[env] = summarize(raw[key][env])
            params = next((w.get("params") for env in envs for w in workers[key][env] if w.get("params")), None)
            case["params"] = params
            nt = case["nt-0.9.2"]
            timed = {m: nt[m]["run_s_median"] for m in FIXED if m in nt and "error" not in nt[m]}
            case["nt_fastest"] = min(timed, key=timed.get) if timed else None
            agreement = {}
            kp = lambda env, m: tmp / f"{env}-{_file_key(chosen)}-{m}.npy"  # noqa: E731
            for m in FIXED:
                agreement[m] = _rel_dev(kp("ntkc-0.9.2", m), kp("nt-0.9.2", m))
            agreement["auto"] = _rel_dev(kp("ntkc-0.9.2", "auto"), kp("nt-0.9.2", "auto"))
            if case["nt_fastest"]:
                agreement["auto_vs_fastest"] = _rel_dev(kp("ntkc-0.9.2", "auto"),
                                                        kp("nt-0.9.2", case["nt_fastest"]))
            if "nt-0.4.25" in envs:
                agreement["nt_0.4.25_vs_0.9.2"] = {
                    m: _rel_dev(kp("nt-0.4.25", m), kp("nt-0.9.2", "jacobian")) for m in nt_methods}
            agreement["nt_vs_nt_jacobian"] = {
                m: _rel_dev(kp("nt-0.9.2", m), kp("nt-0.9.2", "jacobian")) for m in nt_methods}
            case["agreement"] = agreement
            case["workers"] = workers[key]
            case["ratios_ntkc_over_nt"] = _case_ratios(case)
            report_cases.append(case)
            log()
            log(f"{case['model']} (P={params or 0:,}, N={case['n']}, O={case['outputs']}) "
                f"trace_axes={tuple(case['trace_axes'])}, {'a distinct x2' if case['x2'] else 'x2=None'}")
            case_table(case, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary_table(report_cases, log)
    log()
    log(f"finished {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
        f"load {os.getloadavg()[0]:.2f}")
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python", "bench/compare_nt.py", *(argv if argv is not None else sys.argv[1:])]),
        "source": source,
        "rounds": args.rounds,
        "repeats": repeats,
        "environments": {env: {"folder": ENVS[env][0], "packages": versions[env]} for env in envs},
        "nt_aliases": next((w.get("aliases") for c in report_cases for w in c["workers"].get("nt-0.9.2", [])
                            if w.get("aliases")), None),
        "cases": report_cases,
    }
    json_path = results_dir / f"compare-nt-{tag}.json"
    json_path.write_text(json.dumps(report, indent=1))
    log_path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path} and {log_path}")
    return 0


def _file_key(case: dict) -> str:
    return f"{case['model']}-{len(case['trace_axes'])}-{'x2' if case['x2'] else 'sym'}"


def _case_ratios(case: dict) -> dict:
    nt, kc = case["nt-0.9.2"], case["ntkc-0.9.2"]
    out = {}
    pairs = [(m, m) for m in FIXED] + [("auto", "auto")]
    if case.get("nt_fastest"):
        pairs.append(("auto", case["nt_fastest"]))
    for a_m, b_m in pairs:
        a, b = kc.get(a_m), nt.get(b_m)
        if not a or not b or "error" in a or "error" in b:
            continue
        label = a_m if a_m == b_m else f"auto_vs_nt_fastest_{b_m}"
        out[label] = {
            "compile": _ratio(a["total_compile_s"], b["total_compile_s"]),
            "run": _ratio(a["run_s_median"], b["run_s_median"]),
            "run_min": _ratio(a["run_s_min"], b["run_s_min"]),
            "memory": _ratio(a["peak_bytes"], b["peak_bytes"]),
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
