"""ntkc against PyTorch's torch.func NTK recipes, with the same models, weights and inputs.

    python -m bench.compare_torch [--models mlp,cnn,wrn,vit,mixer] [--repeats 5] [--warmup 1]
                                  [--trace both|traced|untraced] [--torch-methods jacobian,ntvp]
                                  [--ntkc-methods auto,structured,jacobian] [--n N] [--quick]
                                  [--ntvp-budget-gib 3] [--budget-s 60] [--threads 2,1] [--worktree]
                                  [--tag NAME]
                                  [--torch-wheel PATH] [--setup-only]

PyTorch lives in its own virtual environment, ``.venv-torch`` in the checkout (git-ignored,
``/.venv*/``), created when missing with ``pip install torch==2.14.1 numpy`` (``--torch-wheel``
installs a downloaded wheel instead). It is never a dependency of ntkc. The PyPI wheel for
x86_64 Linux is the CUDA build: it loads the nvidia-* libraries at import even on a CPU-only
machine, so they are installed with it (about 5 GiB); no GPU is used.

The two torch recipes are those of PyTorch's tutorial "Neural Tangent Kernels" (torch.func),
written out here:

- ``jacobian``: ``vmap(jacrev(f_single))`` over the examples, then one ``einsum`` per parameter
  (``Naf,Mbf->NMab``, or ``Naf,Maf->NM`` traced), summed. The Jacobians are computed once, as
  x2 is x1 here (the tutorial computes them for x1 and again for x2).
- ``ntvp``: NTK-vector products, ``vmap`` over the output basis of ``vjp`` on x1 then ``jvp`` on
  x2, ``vmap``-ed over every pair of examples; the traced kernel is the trace of the full one
  (as in the tutorial). Batched over all pairs it materializes a parameter-sized tangent per
  (example, example, output): N*N*O*P*4 bytes, 38 GB for the MLP. So the outer vmap over x1 runs
  in chunks of c examples, c chosen so that c*N*O*P*4 <= ``--ntvp-budget-gib`` (3 GiB: c=2 on
  the MLP, no chunking on the smaller models).

The traced kernels are divided by O, so that they equal ntkc's ``trace_axes=(-1,)`` (a mean over
the outputs, like neural-tangents'); the untraced kernels are (N, N, O, O) in both.

Each case (model x trace_axes) starts one worker process per method, in the torch environment for
torch's recipes and in this one (JAX + ntkc) for ntkc's methods. A worker builds the model (torch:
from the JAX parameters and input exported as numpy; ntkc: from ``bench/models.py``, checked
bitwise against the export), prepares the kernel (ntkc: trace + lower + XLA compile), runs it
``--warmup`` times (the first kernel is kept for the agreement check), then waits. The driver then
asks the workers for one timed run each in turn, ``--repeats`` times, interleaving torch and ntkc
and reversing the order every repetition, so that drift of this shared machine falls on both
libraries alike. A method whose warm-up call took longer than ``--budget-s / --repeats`` (60 s / 5:
in practice torch's ntvp recipe on the MLP and the CNN, 30-70 s a call) runs fewer timed runs, at
least one; the tables say how many. Peak memory is each worker's ``ru_maxrss`` (a fresh process per method and
case), shown with its value before the first kernel call (imports, model, data), and for ntkc
XLA's accounting of the compiled program beside it.

torch.set_num_threads(2) for both recipes (``--threads``, first value); XLA's CPU client uses every
core. The Jacobian recipe also runs with 1 thread (``torch jacobian 1t``; each further value of
``--threads`` adds one such worker): on this shared machine, with other jobs running, torch's
OpenMP parallel regions wait for a descheduled second thread at every op, and on the small
models 2 threads were up to 10x slower than 1 (WideResNet, 1-min load 4). torch's fastest, to
which ntkc auto is compared, is the fastest of all its workers.

The workers run ``ntkc/`` and ``bench/`` as committed at git HEAD (exported to a temporary
folder), so uncommitted edits in a shared checkout do not leak in; ``--worktree`` runs the
working tree. Writes ``bench/results/compare-torch-<tag>.json`` and ``.log``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import select
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

REQUIRED = ("compare_torch.py", "_torch_models.py")  # checked to be committed by export_source
WATCHED = ("ntkc", "bench/models.py",
           "bench/_torch_models.py", "bench/compare_torch.py", "bench/_compare.py")

DEFAULT_N = {"mlp": 32, "cnn": 16, "wrn": 8, "vit": 8, "mixer": 8}
QUICK_N = {"mlp": 4, "cnn": 2, "wrn": 2, "vit": 2, "mixer": 2}
MODEL_NAMES = ("mlp", "cnn", "wrn", "vit", "mixer")
TORCH_METHODS = ("jacobian", "ntvp")
NTKC_METHODS = ("auto", "structured", "jacobian")

VENV = ".venv-torch"
TORCH = "torch==2.14.1"
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]


def _python(folder: str = VENV) -> pathlib.Path:
    return ROOT / folder / "bin" / "python"


def setup_env(log, wheel: str | None = None) -> None:
    """Create ``.venv-torch`` if it is missing or cannot import torch."""
    py = _python()
    check = [str(py), "-c", "import numpy, torch, torch.func"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    log(f"setting up {VENV} ({wheel or TORCH}, numpy) ...")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROOT / VENV)], check=True)
    subprocess.run([str(py), *PIP, wheel or TORCH, "numpy"], check=True)
    done = subprocess.run(check, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{VENV} is not usable after setup:\n{done.stderr}")


def torch_versions() -> dict:
    out = subprocess.run([str(_python()), "-c", "import json, numpy, torch; print(json.dumps({"
                          "'torch': torch.__version__, 'numpy': numpy.__version__, "
                          "'threads_default': torch.get_num_threads(), "
                          "'parallel': torch.__config__.parallel_info().splitlines()[:6]}))"],
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"error": out.stderr[-500:]}


# ----------------------------------------------------------------------------------------------
# Export: JAX parameters and input as numpy (runs in the JAX environment).


def export(model: str, n: int, outputs: int, path: str) -> int:
    import jax
    import numpy as np

    from bench.models import MODELS

    f, params, x = MODELS[model](n=n, outputs=outputs)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = {"p:" + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    np.savez(path, x=np.asarray(x), y=np.asarray(f(params, x)), **arrays)
    return 0


def _load_npz(path):
    import numpy as np

    z = np.load(path)
    return {k[2:]: z[k] for k in z.files if k.startswith("p:")}, z["x"], z["y"]


# ----------------------------------------------------------------------------------------------
# Workers. Protocol: one JSON object per line on the original stdout (library output goes to
# stderr); commands on stdin: "run" (one timed call), "quit" (report ru_maxrss and exit).


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _serve(proto, call, info: dict) -> int:
    proto.write(json.dumps(info) + "\n")
    proto.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t = time.perf_counter()
            call()
            proto.write(json.dumps({"t": time.perf_counter() - t}) + "\n")
        elif cmd == "quit":
            proto.write(json.dumps({"maxrss_mib": _maxrss_mib()}) + "\n")
            proto.flush()
            return 0
        else:
            proto.write(json.dumps({"error": f"unknown command {cmd!r}"}) + "\n")
        proto.flush()
    return 0


def torch_worker(spec: dict, proto) -> int:
    import numpy as np
    import torch
    from torch.func import functional_call, jacrev, jvp, vjp, vmap

    from bench._torch_models import build

    torch.set_num_threads(spec["threads"])
    arrays, x_np, y_np = _load_npz(spec["npz"])
    net, x = build(spec["model"], arrays, x_np)
    params = {k: v.detach() for k, v in net.named_parameters()}
    with torch.no_grad():
        y = net(x).numpy()
    info = {"library": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
            "params": int(sum(p.numel() for p in params.values())),
            "forward_rel_dev": float(np.max(np.abs(y - y_np)) / (np.max(np.abs(y_np)) or 1.0))}
    traced = bool(spec["trace_axes"])
    outputs = y.shape[-1]

    def f_single(params, x):
        return functional_call(net, params, (x.unsqueeze(0),)).squeeze(0)

    def ntk_jacobian(x1):
        # The tutorial's empirical_ntk_jacobian_contraction, with J(x2) = J(x1) reused.
        jac1 = vmap(jacrev(f_single), (None, 0))(params, x1)
        jac1 = [j.flatten(2) for j in jac1.values()]
        expr = "Naf,Maf->NM" if traced else "Naf,Mbf->NMab"
        result = torch.stack([torch.einsum(expr, j1, j2) for j1, j2 in zip(jac1, jac1)]).sum(0)
        return result / outputs if traced else result

    def get_ntk(x1, x2):
        # The tutorial's empirical_ntk_ntk_vps, for one pair of examples.
        def func_x1(params):
            return f_single(params, x1)

        def func_x2(params):
            return f_single(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)  # vec @ J(x1)
            _, jvps = jvp(func_x2, (params,), vjps)  # J(x2) @ vjps
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    pairs = vmap(vmap(get_ntk, in_dims=(None, 0)), in_dims=(0, None))
    n = x.shape[0]
    per_example = n * outputs * info["params"] * 4  # bytes of parameter-sized tangents per x1 example
    chunk = max(1, min(n, int(spec["ntvp_budget_gib"] * 2**30 // per_example)))

    def ntk_ntvp(x1):
        result = torch.cat([pairs(x1[i:i + chunk], x1) for i in range(0, n, chunk)])
        return torch.einsum("NMKK->NM", result) / outputs if traced else result

    kernel = {"jacobian": ntk_jacobian, "ntvp": ntk_ntvp}[spec["method"]]
    if spec["method"] == "ntvp":
        info["ntvp_chunk"] = chunk
    info["rss_before_mib"] = _maxrss_mib()
    first = []
    for i in range(spec["warmup"]):
        t = time.perf_counter()
        theta = kernel(x)
        first.append(time.perf_counter() - t)
        if i == 0 and spec.get("kernel_path"):
            np.save(spec["kernel_path"], theta.numpy())
        del theta
    info["warmup_s"] = first

    def call():
        theta = kernel(x)
        del theta

    return _serve(proto, call, info)


def ntkc_worker(spec: dict, proto) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntkc
    from bench.models import MODELS

    info = {"library": "ntkc", "version": ntkc.__version__, "file": ntkc.__file__, "jax": jax.__version__,
            "device": jax.devices()[0].device_kind}
    # One-time XLA start-up, so that it is charged to no method.
    a = jnp.ones((64, 64), jnp.float32)
    jax.jit(lambda a: jnp.tanh(a @ a).sum()).lower(a).compile()(a).block_until_ready()

    f, params, x = MODELS[spec["model"]](n=spec["n"], outputs=spec["outputs"])
    arrays, x_np, _ = _load_npz(spec["npz"])
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    same = (np.array_equal(np.asarray(x), x_np) and len(leaves) == len(arrays)
            and all(np.array_equal(np.asarray(v), arrays[jax.tree_util.keystr(k)]) for k, v in leaves))
    if not same:
        raise RuntimeError("bench/models.py does not reproduce the exported weights and inputs")
    info["params"] = int(sum(np.size(v) for _, v in leaves))
    info["rss_before_mib"] = _maxrss_mib()
    kernel_fn = ntkc.ntk_fn(f, trace_axes=tuple(spec["trace_axes"]), vmap_axes=0, method=spec["method"])
    start = time.perf_counter()
    config, _ = kernel_fn.prepare(x, None, params)
    info["resolved"] = config.method
    lowered = jax.jit(lambda x, p: kernel_fn(x, None, p),
                      compiler_options=kernel_fn.compiler_options(x, None, params)).lower(x, params)
    info["trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    info["compile_s"] = time.perf_counter() - start
    try:
        m = compiled.memory_analysis()
        info["xla_peak_bytes"] = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every client implements it
        info["xla_peak_bytes"] = None
    first = []
    for i in range(spec["warmup"]):
        t = time.perf_counter()
        theta = compiled(x, params).block_until_ready()
        first.append(time.perf_counter() - t)
        if i == 0 and spec.get("kernel_path"):
            np.save(spec["kernel_path"], np.asarray(theta))
        del theta
    info["warmup_s"] = first

    def call():
        compiled(x, params).block_until_ready()

    return _serve(proto, call, info)


def worker(spec_path: str) -> int:
    spec = json.loads(pathlib.Path(spec_path).read_text())
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by the libraries goes to stderr
    sys.stdout = sys.stderr
    try:
        run = torch_worker if spec["library"] == "torch" else ntkc_worker
        return run(spec, proto)
    except Exception as err:  # noqa: BLE001 - reported to the driver
        import traceback

        traceback.print_exc()
        proto.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
        proto.flush()
        return 1


# ----------------------------------------------------------------------------------------------
# Driver.


class Worker:
    """One method of one library on one case, in its own process."""

    def __init__(self, library: str, method: str, label: str, spec: dict, src: pathlib.Path,
                 tmp: pathlib.Path):
        self.library, self.method, self.label = library, method, label
        self.info, self.times, self.error, self.maxrss_mib = {}, [], None, None
        spec = dict(spec, library=library, method=method)
        spec_path = tmp / f"spec-{label.replace(' ', '-')}.json"
        spec_path.write_text(json.dumps(spec))
        py = str(_python()) if library == "torch" else sys.executable
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.stderr = open(tmp / f"stderr-{label.replace(' ', '-')}.txt", "w+")
        self.proc = subprocess.Popen([py, str(src / "bench" / "compare_torch.py"), "--worker", str(spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, cwd=str(src), env=env)

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read()[-2000:]
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {tail}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def ready(self, timeout: float) -> bool:
        try:
            self.info = self._read(timeout)
            return True
        except Exception as err:  # noqa: BLE001
            self.fail(err)
            return False

    def run(self, timeout: float) -> None:
        if self.error:
            return
        try:
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
            self.times.append(self._read(timeout)["t"])
        except Exception as err:  # noqa: BLE001
            self.fail(err)

    def quit(self) -> None:
        if not self.error:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.maxrss_mib = self._read(60)["maxrss_mib"]
            except Exception as err:  # noqa: BLE001
                self.fail(err)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()

    def fail(self, err) -> None:
        self.error = f"{type(err).__name__}: {err}"
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def summary(self) -> dict:
        out = {"library": self.library, "method": self.method, **self.info}
        if self.error:
            out["error"] = self.error
        if self.times:
            out.update(run_s=self.times, run_s_median=statistics.median(self.times), run_s_min=min(self.times))
        out["maxrss_mib"] = self.maxrss_mib
        return out


def run_case(model, n, outputs, trace_axes, methods, args, src, tmp, log) -> dict:
    npz = tmp / f"{model}-{n}.npz"
    if not npz.exists():
        done = subprocess.run([sys.executable, str(src / "bench" / "compare_torch.py"), "--export", model,
                               str(n), str(outputs), str(npz)], capture_output=True, text=True, cwd=str(src))
        if done.returncode:
            raise RuntimeError(f"export of {model} failed:\n{done.stderr[-2000:]}")
    tag = f"{model}-{len(trace_axes)}"
    base = {"model": model, "n": n, "outputs": outputs, "trace_axes": list(trace_axes), "npz": str(npz),
            "warmup": max(args.warmup, 1), "ntvp_budget_gib": args.ntvp_budget_gib}
    workers = []
    # Started one at a time, so that no worker's set-up (import, XLA compile, warm-up) overlaps
    # another's; they then wait, idle, until the timed runs.
    for library, method, threads, label in methods:
        spec = dict(base, threads=threads, kernel_path=str(tmp / f"{tag}-{label.replace(' ', '-')}.npy"))
        w = Worker(library, method, label, spec, src, tmp)
        start = time.perf_counter()
        w.ready(args.timeout)
        w.setup_wall_s = time.perf_counter() - start
        print(f"    {w.label}: ready in {w.setup_wall_s:.1f} s" + (f" ({w.error[:200]})" if w.error else ""),
              flush=True)
        workers.append(w)
    # Interleave the two libraries, reversing the order every repetition.
    torch_w = [w for w in workers if w.library == "torch"]
    ntkc_w = [w for w in workers if w.library == "ntkc"]
    order = []
    for i in range(max(len(torch_w), len(ntkc_w))):
        order += torch_w[i:i + 1] + ntkc_w[i:i + 1]
    # A method whose one call takes longer than --budget-s / --repeats (in practice only torch's
    # ntvp recipe on the MLP and the CNN) runs fewer timed runs, at least one, spread over the
    # repetitions.
    for w in workers:
        w.runs = args.repeats
        last = (w.info.get("warmup_s") or [0])[-1]
        if args.budget_s > 0 and last * args.repeats > args.budget_s:
            w.runs = max(1, min(args.repeats, int(args.budget_s // last)))
        w.reps = {int((i + 0.5) * args.repeats / w.runs) for i in range(w.runs)}
    load = [os.getloadavg()[0]]
    for rep in range(args.repeats):
        for w in (order if rep % 2 == 0 else order[::-1]):
            if rep in w.reps:
                w.run(args.timeout)
        load.append(os.getloadavg()[0])
    for w in workers:
        w.quit()
    case = {"model": model, "n": n, "outputs": outputs, "trace_axes": list(trace_axes), "load_1min": load}
    case["results"] = {w.label: dict(w.summary(), setup_wall_s=round(w.setup_wall_s, 2)) for w in workers}
    case["params"] = next((r["params"] for r in case["results"].values() if r.get("params")), None)
    kp = lambda label: tmp / f"{tag}-{label.replace(' ', '-')}.npy"  # noqa: E731
    reference = next((label for label in ("ntkc auto", "ntkc structured", "ntkc jacobian")
                      if label in case["results"] and kp(label).exists()), None)
    case["agreement_reference"] = reference
    case["rel_dev_vs_reference"] = {label: _rel_dev(kp(label), kp(reference)) if reference else None
                                    for label in case["results"] if label != reference}
    if "torch jacobian" in case["results"] and "ntkc jacobian" in case["results"]:
        case["rel_dev_torch_jacobian_vs_ntkc_jacobian"] = _rel_dev(kp("torch jacobian"), kp("ntkc jacobian"))
    ok = {label: r for label, r in case["results"].items() if "run_s_median" in r and "error" not in r}
    torch_ok = {k: v for k, v in ok.items() if k.startswith("torch")}
    fastest = min(torch_ok, key=lambda k: torch_ok[k]["run_s_median"]) if torch_ok else None
    case["torch_fastest"] = fastest
    auto = ok.get("ntkc auto")
    if fastest and auto:
        case["ratio_auto_over_torch_fastest"] = {
            "run_median": _ratio(auto["run_s_median"], ok[fastest]["run_s_median"]),
            "run_min": _ratio(auto["run_s_min"], ok[fastest]["run_s_min"]),
            "maxrss": _ratio(auto.get("maxrss_mib"), ok[fastest].get("maxrss_mib")),
        }
    torch_jac = [v["run_s_median"] for k, v in torch_ok.items() if k.startswith("torch jacobian")]
    if torch_jac and "ntkc jacobian" in ok:  # the same algorithm; torch's faster thread count
        case["ratio_ntkc_jacobian_over_torch_jacobian"] = _ratio(ok["ntkc jacobian"]["run_s_median"],
                                                                 min(torch_jac))
    case_table(case, log)
    return case


def case_table(case: dict, log) -> None:
    name = f"{case['model']} (P={case['params'] or 0:,}, N={case['n']}, O={case['outputs']})"
    log()
    log(f"{name} trace_axes={tuple(case['trace_axes'])}, 1-min load {case['load_1min'][0]:.1f} -> "
        f"{case['load_1min'][-1]:.1f}")
    log(f"{'':<18}{'median s':>10}{'min s':>10}{'runs':>5}{'setup s':>9}{'maxrss MiB':>12}{'before':>8}"
        f"{'XLA MiB':>9}{'rel dev':>10}  notes")
    ref = case["agreement_reference"]
    for label, r in case["results"].items():
        if "error" in r and "run_s_median" not in r:
            log(f"{label:<18}failed: {r['error'][:300]}")
            continue
        setup = r.get("compile_s", 0) + r.get("trace_s", 0) if r["library"] == "ntkc" else (r.get("warmup_s") or [None])[0]
        xla = r.get("xla_peak_bytes")
        notes = []
        if r.get("resolved"):
            notes.append(f"ran {r['resolved']}")
        if r.get("ntvp_chunk"):
            notes.append(f"x1 in chunks of {r['ntvp_chunk']}")
        if label == ref:
            notes.append("agreement reference")
        if r.get("error"):
            notes.append(f"error: {r['error'][:120]}")
        log(f"{label:<18}{_fmt(r.get('run_s_median'), '>10.4f')}{_fmt(r.get('run_s_min'), '>10.4f')}"
            f"{len(r.get('run_s', [])):>5}{_fmt(setup, '>9.2f')}{_fmt(r.get('maxrss_mib'), '>12.0f')}"
            f"{_fmt(r.get('rss_before_mib'), '>8.0f')}{_fmt(None if xla is None else xla / 2**20, '>9.1f')}"
            f"{_fmt(case['rel_dev_vs_reference'].get(label), '>10.1e')}  {', '.join(notes)}")
    ratio = case.get("ratio_auto_over_torch_fastest")
    if ratio:
        log(f"ntkc auto / torch's fastest ({case['torch_fastest']}): median {ratio['run_median']:.3f}, "
            f"min {ratio['run_min']:.3f}, maxrss {_fmt(ratio['maxrss'], '.2f')}")


def _short(label: str) -> str:
    return label.replace("jacobian", "jac").replace("structured", "struct")


def summary_table(cases: list, log) -> None:
    log()
    log("Summary: median run seconds (< 1 in the ratios: ntkc faster); setup s = torch's first call, "
        "ntkc's trace + compile")
    labels = list(dict.fromkeys(label for case in cases for label in case["results"]))
    log(f"{'case':<22}" + "".join(f"{_short(label):>13}" for label in labels)
        + f"{'auto/torch best':>20}{'(min)':>7}{'jac/jac':>8}{'max rel dev':>12}")
    for case in cases:
        res = case["results"]
        med = lambda label: _fmt((res.get(label) or {}).get("run_s_median"), ">.4f")  # noqa: E731
        ratio = case.get("ratio_auto_over_torch_fastest") or {}
        devs = [v for v in case["rel_dev_vs_reference"].values() if v is not None]
        name = f"{case['model']} N={case['n']} {'traced' if case['trace_axes'] else 'untraced'}"
        best = case.get("torch_fastest") or "-"
        log(f"{name:<22}" + "".join(f"{med(label):>13}" for label in labels)
            + f"{_fmt(ratio.get('run_median'), '.3f') + ' (' + _short(best).replace('torch ', '') + ')':>20}"
            f"{_fmt(ratio.get('run_min'), '>7.3f')}{_fmt(case.get('ratio_ntkc_jacobian_over_torch_jacobian'), '>8.2f')}"
            f"{_fmt(max(devs) if devs else None, '>12.1e')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,wrn,vit,mixer", help=f"comma-separated, from {','.join(MODEL_NAMES)}")
    ap.add_argument("--n", type=int, default=None, help="examples for every model (default: per model)")
    ap.add_argument("--quick", action="store_true", help=f"small N: {QUICK_N}")
    ap.add_argument("--outputs", type=int, default=10)
    ap.add_argument("--trace", choices=("both", "traced", "untraced"), default="both")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (>= 5 unless --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per method before the timed ones")
    ap.add_argument("--torch-methods", default=",".join(TORCH_METHODS))
    ap.add_argument("--ntkc-methods", default=",".join(NTKC_METHODS))
    ap.add_argument("--ntvp-budget-gib", type=float, default=3.0,
                    help="chunk torch's ntvp recipe so its parameter-sized tangents stay under this")
    ap.add_argument("--budget-s", type=float, default=60,
                    help="timed seconds per method and case: a method whose warm-up call took longer than "
                         "this / --repeats runs fewer timed runs (at least 1); 0: no cap")
    ap.add_argument("--threads", default="2,1",
                    help="torch.set_num_threads: the first for every torch recipe, each further one adds "
                         "a 'torch jacobian Nt' worker")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per worker answer")
    ap.add_argument("--tag", default=None, help="output name: bench/results/compare-torch-TAG.{json,log}")
    ap.add_argument("--worktree", action="store_true", help="run ntkc and bench/ from the working tree")
    ap.add_argument("--torch-wheel", default=None, help="install torch from this wheel when setting up")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--export", nargs=4, metavar=("MODEL", "N", "O", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.export:
        model, n, outputs, path = args.export
        return export(model, int(n), int(outputs), path)

    models = [m for m in args.models.split(",") if m]
    torch_methods = [m for m in args.torch_methods.split(",") if m]
    ntkc_methods = [m for m in args.ntkc_methods.split(",") if m]
    for chosen, valid, what in ((models, MODEL_NAMES, "models"), (torch_methods, TORCH_METHODS, "torch methods"),
                                (ntkc_methods, NTKC_METHODS, "ntkc methods")):
        if any(m not in valid for m in chosen):
            ap.error(f"unknown {what} in {chosen}; valid: {', '.join(valid)}")
    if not args.quick and args.repeats < 5:
        ap.error("--repeats must be >= 5 (or pass --quick)")
    threads = [int(t) for t in str(args.threads).split(",") if t]
    methods = [("torch", m, threads[0], f"torch {m}") for m in torch_methods]
    if "jacobian" in torch_methods:
        methods[1:1] = [("torch", "jacobian", t, f"torch jacobian {t}t") for t in threads[1:]]
    methods += [("ntkc", m, None, f"ntkc {m}") for m in ntkc_methods]
    traces = {"both": [(), (-1,)], "traced": [(-1,)], "untraced": [()]}[args.trace]
    tag = args.tag or f"cpu-{os.cpu_count()}core" + ("-quick" if args.quick else "")
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    setup_env(log, args.torch_wheel)
    tv = torch_versions()
    if args.setup_only:
        print(json.dumps(tv, indent=1))
        return 0
    import jax  # the driver's environment is ntkc's: report its JAX

    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    log(f"ntkc vs PyTorch torch.func recipes, {started.isoformat(timespec='seconds')}, {platform.machine()} "
        f"with {os.cpu_count()} CPUs ({_cpu_name()}), load {os.getloadavg()[0]:.2f}")
    log(f"  {VENV}: torch {tv.get('torch')}, numpy {tv.get('numpy')}; torch.set_num_threads({threads[0]})"
        + (f", jacobian also with {', '.join(map(str, threads[1:]))}" if threads[1:] else ""))
    log(f"  {sys.executable}: jax {jax.__version__}, jaxlib {_version('jaxlib')}, numpy {_version('numpy')}")
    log(f"float32, O={args.outputs}; {max(args.warmup, 1)} warm-up + {args.repeats} timed runs per method "
        f"(fewer where one call exceeds {args.budget_s:g} s / {args.repeats}), one process per method, "
        f"torch and ntkc interleaved; ntvp chunk budget {args.ntvp_budget_gib:g} GiB")

    cases = []
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="compare-torch-"))
    try:
        if args.worktree:
            src, source = ROOT, _compare.source_info(ROOT, WATCHED)
        else:
            src = tmp / "src"
            source = _compare.export_source(src, REQUIRED, WATCHED)
        log(f"ntkc and bench/ from {source['source']} {source['commit'][:10]}"
            + (" (with uncommitted changes)" if source["uncommitted_changes_in_worktree"] and src == ROOT else ""))
        for model in models:
            n = args.n or (QUICK_N if args.quick else DEFAULT_N)[model]
            for trace_axes in traces:
                print(f"  {model} N={n} trace_axes={trace_axes} ...", flush=True)
                cases.append(run_case(model, n, args.outputs, trace_axes, methods, args, src, tmp, log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary_table(cases, log)
    log()
    log(f"finished {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} after "
        f"{time.perf_counter() - wall:.0f} s, load {os.getloadavg()[0]:.2f}")
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python -m bench.compare_torch", *(argv if argv is not None else sys.argv[1:])]),
        "source": source,
        "torch": tv,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "repeats": args.repeats,
        "warmup": max(args.warmup, 1),
        "threads": threads,
        "ntvp_budget_gib": args.ntvp_budget_gib,
        "budget_s": args.budget_s,
        "wall_s": time.perf_counter() - wall,
        "cases": cases,
    }
    json_path = results_dir / f"compare-torch-{tag}.json"
    log_path = results_dir / f"compare-torch-{tag}.log"
    json_path.write_text(json.dumps(report, indent=1))
    log_path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path.relative_to(ROOT)} and {log_path.relative_to(ROOT)}")
    return 0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
