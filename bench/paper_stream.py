"""Streaming over outputs at the paper's scale (issue 13, item 4): the untraced kernel of a Flax
ResNet-18 on 224x224x3 with O=1000 logits and N=1, x2=None, under ``memory_limit`` (default
8 GiB), which no method fits whole, so the planner computes it in chunks of outputs.

    python -m bench.paper_stream [--method structured] [--limit-gib 8] [--outputs 1000]
                                 [--check 16] [--timeout 3600] [--json FILE]

Three child processes, one after another, so that each one's peak RSS is its own
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read after each):

1. ``run``: the kernel under ``memory_limit``, timed (first call: tracing, planning and
   compiling included), saved to a .npy;
2. ``check``: the jacobian-contraction kernel of ``f`` restricted to its first ``--check``
   outputs (a small function of its own) against the corresponding block of the saved kernel;
3. ``memory``: the planner's working-set estimate for one chunk (two different chunks, the
   costlier call) against XLA's memory analysis of that chunk's compiled program.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _model(outputs):
    from bench import paper_models

    return paper_models.resnet18(n=1, outputs=outputs)


def child_run(args) -> dict:
    import jax
    import numpy as np
    import ntkc

    f, params, x1, _ = _model(args.outputs)
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method=args.method, memory_limit=int(args.limit_gib * 2**30))
    start = time.perf_counter()
    plan = ntkc.plan(f, x1, None, params, trace_axes=(), vmap_axes=0, method=args.method,
                     memory_limit=int(args.limit_gib * 2**30))
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    theta = np.asarray(kfn(x1, None, params))
    run_s = time.perf_counter() - start
    np.save(args.kernel, theta)
    return {"plan": plan.method, "plan_s": plan_s, "first_call_s": run_s, "shape": list(theta.shape),
            "finite": bool(np.isfinite(theta).all()),
            "symmetric_dev": float(np.max(np.abs(theta - np.swapaxes(theta, 2, 3)))
                                   / np.max(np.abs(theta))),
            "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "jax": jax.__version__}


def child_check(args) -> dict:
    import numpy as np
    import ntkc

    f, params, x1, _ = _model(args.outputs)
    k = args.check
    head = lambda p, x: f(p, x)[:, :k]  # noqa: E731  f restricted to its first k outputs
    start = time.perf_counter()
    want = np.asarray(ntkc.ntk_fn(head, (), vmap_axes=0, method="jacobian",
                                  memory_limit=16 * 2**30)(x1, None, params), np.float64)
    theta = np.load(args.kernel)
    got = theta[:, :, :k, :k].astype(np.float64)
    return {"check_outputs": k, "jacobian_s": time.perf_counter() - start,
            "rel_err_vs_jacobian": float(np.max(np.abs(got - want)) / np.max(np.abs(want))),
            "max_abs": float(np.max(np.abs(want)))}


def child_memory(args) -> dict:
    import jax
    import ntkc
    from ntkc import _split

    f, params, x1, _ = _model(args.outputs)
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method=args.method, memory_limit=int(args.limit_gib * 2**30))
    config, _ = kfn.prepare(x1, None, params)
    axis, size = config.chunk
    inner = kfn._chunk_fn(axis, size)
    out = {"chunk": [axis, size]}
    for label, other in (("pair", _split.output_start(size)), ("diagonal", None)):
        x2 = None if other is None else (x1, other)
        cfg, cargs = inner.prepare((x1, _split.output_start(0)), x2, params)
        req = inner._request(cfg, cargs, warn=False)
        assignment = cfg.leaf_methods or (cfg.method,) * len(req.leaf_sizes)
        estimate = float(req.peak(assignment))
        start = time.perf_counter()
        compiled = inner._jit(cfg, cargs).lower(*cargs, config=cfg).compile()
        compile_s = time.perf_counter() - start
        m = compiled.memory_analysis()
        xla = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
               "temp": m.temp_size_in_bytes, "generated_code": m.generated_code_size_in_bytes}
        total = xla["argument"] + xla["output"] + xla["temp"]
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[label] = {"method": cfg.method, "block": cfg.block, "estimate_bytes": estimate,
                      "xla": xla, "xla_total_bytes": total, "estimate_over_xla": estimate / total,
                      "estimate_over_xla_temp": estimate / max(xla["temp"], 1),
                      "compile_s": compile_s, "xla_flops": float((cost or {}).get("flops", 0))}
    start = time.perf_counter()
    out["auto_plan"] = ntkc.plan(f, x1, None, params, trace_axes=(), vmap_axes=0, method="auto",
                                 memory_limit=int(args.limit_gib * 2**30)).method
    out["auto_plan_s"] = time.perf_counter() - start
    out["jax"] = jax.__version__
    return out


CHILDREN = {"run": child_run, "check": child_check, "memory": child_memory}


def parser():
    ap = argparse.ArgumentParser(prog="python -m bench.paper_stream", description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="structured", help="ntkc method (default: structured)")
    ap.add_argument("--limit-gib", type=float, default=8.0, help="memory_limit in GiB (default: 8)")
    ap.add_argument("--outputs", type=int, default=1000, help="logits O (default: 1000)")
    ap.add_argument("--check", type=int, default=16,
                    help="outputs whose block is checked against the jacobian method (default: 16)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child (default: 3600)")
    ap.add_argument("--steps", default="run,check,memory", help="children to run (default: all)")
    ap.add_argument("--workdir", default=None,
                    help="where the children leave the kernel and their results (default: a new "
                         "temporary folder); steps already done there (a <step>.json) are read, "
                         "not rerun")
    ap.add_argument("--json", default=None, help="default: bench/results/paper-stream-<method>.json")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.child:  # inside a child process
        sys.path.insert(0, str(ROOT))
        result = CHILDREN[args.child](args)
        pathlib.Path(args.out).write_text(json.dumps(result))
        return 0
    path = pathlib.Path(args.json) if args.json else (
        ROOT / "bench" / "results" / f"paper-stream-{args.method}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="ntkc-stream-"))
    kernel = tmp / "kernel.npy"
    report = {"model": "Flax ResNet-18, 224x224x3, N=1, x2=None, trace_axes=()",
              "outputs": args.outputs, "method": args.method, "memory_limit_gib": args.limit_gib}
    for step in args.steps.split(","):
        out = tmp / f"{step}.json"
        if out.exists():  # done by an earlier invocation with this --workdir
            report[step] = {"rc": 0, "from_workdir": True, **json.loads(out.read_text())}
            print(step, "(done earlier)", json.dumps(report[step], indent=1), flush=True)
            continue
        cmd = [sys.executable, "-m", "bench.paper_stream", "--child", step, "--kernel", str(kernel),
               "--out", str(out), "--method", args.method, "--limit-gib", str(args.limit_gib),
               "--outputs", str(args.outputs), "--check", str(args.check)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout, capture_output=True, text=True)
            rc, tail = proc.returncode, (proc.stderr or "")[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = "timeout", f"killed after {args.timeout} s"
        wall = time.perf_counter() - start
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB, max so far
        entry = {"wall_s": wall, "rc": rc, "children_maxrss_mib_so_far": maxrss}
        if rc == 0:
            entry.update(json.loads(out.read_text()))
        else:
            entry["error"] = tail
        report[step] = entry
        print(step, json.dumps(entry, indent=1), flush=True)
        path.write_text(json.dumps(report, indent=1))
        if rc != 0 and step == "run":
            break
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
