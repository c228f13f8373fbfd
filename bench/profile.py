"""Where a kernel program's time goes: a profile per fused XLA op (issue 13, item 3).

    python -m bench.profile --case resnet18_8x8 [--x2 none|given] [--trace untraced|traced]
                            [--method structured] [--n N] [--outputs O] [--inside-jit]
                            [--runs 3] [--top 25] [--json FILE]
    python -m bench.profile --case suite:cnn ...     (a model of bench/models.py)

The program is the one a kernel function runs when called (``ntkc.compile``, with ntkc's XLA
options), or with ``--inside-jit`` the one XLA compiles when the call sits inside the user's own
``jax.jit``. It runs ``--runs`` times under ``jax.profiler.trace``; the trace is read with
``xprof`` (``pip install xprof``) and every event named after an instruction of the optimized HLO
is kept. Each op is classified from its HLO: ``conv`` / ``dot`` (with its FLOPs, counted from the
shapes, and the GFLOP/s it ran at), ``copy/transpose`` (layout changes), ``elementwise``,
``reduce``, ``gather`` / ``scatter``, ``select-and-scatter``, ``other``. From its source metadata
it is put in a *phase*:

- ``cotangent pass``: under ``transpose(...)``, the reverse passes of the linear map, one per
  output basis vector and example (what every exact method needs);
- ``forward``: the primal computation of the residuals (under ``vmap()`` without a transpose);
- ``terms``: the contractions of factors and cotangents, and everything after them;
- ``unattributed``: ops an XLA pass made without source metadata (XLA:CPU expands
  select-and-scatter, max pooling's transpose, into iotas, a concatenate and a scatter).

XLA:CPU runs independent ops concurrently, one per thread; the op times therefore add up to more
than the wall time, and ``parallelism`` (their sum over the wall time) says by how much.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import math
import pathlib
import platform
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* (\S+?)\((.*)$")
_COMPUTATION = re.compile(r"^%([\w.\-]+) \(.*\{$")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d)


def parse_hlo(text: str) -> dict:
    """Instruction name -> ``dict(opcode, shape, body, source, line)`` for every instruction of the
    optimized HLO; a fusion's ``body`` is the list of its fused computation's instructions."""
    computations, current, instructions = {}, None, {}
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = computations.setdefault(head.group(1), [])
            continue
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        name, _, shape, opcode, rest = m.groups()
        source = re.search(r'op_name="([^"]*)"', rest)
        info = dict(name=name, opcode=opcode, shape=_dims(shape), line=line.strip(),
                    source=source.group(1) if source else "")
        instructions[name] = info
        if current is not None:
            current.append(info)
    for info in instructions.values():
        called = re.search(r"calls=%([\w.\-]+)", info["line"])
        info["body"] = computations.get(called.group(1), []) if called else []
    return instructions


def op_flops(info: dict, hlo: dict) -> float:
    """FLOPs of the convolutions and dots in an instruction (fused or not), from their shapes."""
    total = 0.0
    for inner in info["body"] or [info]:
        line = inner["line"]
        out = math.prod(inner["shape"])
        if inner["opcode"] == "convolution":
            window = re.search(r"size=([\dx]+)", line)
            taps = math.prod(int(s) for s in window.group(1).split("x")) if window else 1
            labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
            kernel = _operand_shape(line, 1, hlo)
            # the kernel's input-feature size is per group already
            total += 2.0 * out * taps * (kernel[labels.index("i")] if kernel else 0)
        elif inner["opcode"] == "dot":
            lhs = _operand_shape(line, 0, hlo)
            dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
            k = math.prod(lhs[int(d)] for d in dims.group(1).split(",") if d) if lhs and dims else 0
            total += 2.0 * out * k
    return total


def _operand_shape(line: str, k: int, hlo: dict):
    """The shape of operand ``k`` of an instruction, looked up by name (XLA:CPU prints operands
    as ``%name``)."""
    names = re.findall(r"%([\w.\-]+)", line.split(" = ", 1)[1].split("(", 1)[1])
    return hlo[names[k]]["shape"] if len(names) > k and names[k] in hlo else None


def kind(info: dict) -> str:
    """What an op does, from the opcodes it runs."""
    ops = {i["opcode"] for i in info["body"]} or {info["opcode"]}
    if "convolution" in ops:
        return "conv"
    if "dot" in ops:
        return "dot"
    if "select-and-scatter" in ops:
        return "select-and-scatter"
    if ops & {"scatter"}:
        return "scatter"
    if ops & {"gather"}:
        return "gather"
    if ops & {"reduce", "reduce-window"}:
        return "reduce"
    if ops <= {"copy", "transpose", "bitcast", "parameter", "broadcast", "reshape", "slice",
               "concatenate", "pad", "constant", "dynamic-slice", "dynamic-update-slice"}:
        return "copy/transpose"
    return "elementwise"


def phase(info: dict) -> str:
    source = info["source"]
    if not source:  # made by an XLA pass (e.g. select-and-scatter expanded into iota + scatter)
        return "unattributed"
    if "transpose(" in source:
        return "cotangent pass"
    if re.search(r"/vmap\(\)/|/jvp\(|/linearize", source) and "dot_general" not in source[-12:]:
        return "forward"
    return "terms"


def events_by_op(xplane: str, names) -> tuple[dict, dict]:
    """Total microseconds and count per HLO instruction name, from an xprof trace."""
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "trace_viewer", {})
    if isinstance(data, bytes) and data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    trace = json.loads(data)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            total[e["name"]] += e.get("dur", 0.0)
            count[e["name"]] += 1
    return total, count


def profile(executable, run, runs: int) -> dict:
    """Per-op times of a compiled program (``run()`` calls it), and its wall time per run."""
    import jax

    hlo = parse_hlo(executable.as_text())
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder):
            for _ in range(runs):
                jax.block_until_ready(run())
        wall = (time.perf_counter() - start) / runs
        xplane = sorted(glob.glob(folder + "/**/*.xplane.pb", recursive=True))[-1]
        total, count = events_by_op(xplane, set(hlo))
    ops = []
    for name, us in total.items():
        info = hlo[name]
        flops = op_flops(info, hlo)
        seconds = us / 1e6 / runs
        ops.append(dict(op=name, kind=kind(info), phase=phase(info), seconds=seconds,
                        calls=count[name] // runs, shape=list(info["shape"]), flops=flops,
                        gflops_per_s=flops / seconds / 1e9 if flops and seconds else None,
                        source=info["source"]))
    ops.sort(key=lambda o: -o["seconds"])
    return dict(wall_s=wall, op_s=sum(o["seconds"] for o in ops), ops=ops)


def summary(ops: list[dict], key: str) -> list[dict]:
    groups = collections.defaultdict(lambda: dict(seconds=0.0, flops=0.0, ops=0))
    for o in ops:
        g = groups[o[key]]
        g["seconds"] += o["seconds"]
        g["flops"] += o["flops"]
        g["ops"] += 1
    rows = [dict({key: k}, **v) for k, v in groups.items()]
    return sorted(rows, key=lambda r: -r["seconds"])


def _case(args):
    """``(f, params, x1, x2)`` of a paper case or of a suite model (``suite:NAME``)."""
    import jax.numpy as jnp

    if args.case.startswith("suite:"):
        from bench import models

        kwargs = {k: v for k, v in (("n", args.n), ("outputs", args.outputs)) if v is not None}
        f, params, x = models.MODELS[args.case[6:]](**kwargs)
        return f, params, x, jnp.flip(x, 0) + 0.1
    from bench import paper, paper_models

    model, kwargs = paper.CASES[args.case]
    kwargs = dict(kwargs, **{k: v for k, v in (("n", args.n), ("outputs", args.outputs))
                             if v is not None})
    return paper_models.MODELS[model](**kwargs)


def table(result: dict, top: int) -> str:
    wall, op_s = result["wall_s"], result["op_s"]
    lines = [f"wall {wall:.3f} s per run; op time {op_s:.3f} s (parallelism {op_s / wall:.2f}); "
             f"XLA {result['xla_flops'] / 1e9:.4g} GFLOP, {result['xla_flops'] / wall / 1e9:.1f} "
             f"GFLOP/s of wall time", "",
             "| phase | op time s | share | GFLOP | GFLOP/s per thread |", "|---|---|---|---|---|"]
    for r in summary(result["ops"], "phase"):
        rate = f"{r['flops'] / r['seconds'] / 1e9:.1f}" if r["flops"] else "-"
        lines.append(f"| {r['phase']} | {r['seconds']:.3f} | {r['seconds'] / op_s:.0%} | "
                     f"{r['flops'] / 1e9:.4g} | {rate} |")
    lines += ["", "| kind | op time s | share | GFLOP | GFLOP/s per thread |", "|---|---|---|---|---|"]
    for r in summary(result["ops"], "kind"):
        rate = f"{r['flops'] / r['seconds'] / 1e9:.1f}" if r["flops"] else "-"
        lines.append(f"| {r['kind']} | {r['seconds']:.3f} | {r['seconds'] / op_s:.0%} | "
                     f"{r['flops'] / 1e9:.4g} | {rate} |")
    lines += ["", f"Top {top} ops:", "", "| op | kind | phase | s | shape | GFLOP/s | source |",
              "|---|---|---|---|---|---|---|"]
    for o in result["ops"][:top]:
        rate = "-" if o["gflops_per_s"] is None else f"{o['gflops_per_s']:.1f}"
        lines.append(f"| {o['op']} | {o['kind']} | {o['phase']} | {o['seconds']:.4f} | "
                     f"{'x'.join(map(str, o['shape']))} | {rate} | {o['source'][-60:]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="suite:cnn",
                    help="a case of bench.paper (e.g. resnet18_8x8), or suite:NAME for a model of "
                         "bench/models.py (default: suite:cnn)")
    ap.add_argument("--x2", choices=("none", "given"), default="given")
    ap.add_argument("--trace", choices=("untraced", "traced"), default="untraced")
    ap.add_argument("--method", default="structured")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--outputs", type=int, default=None)
    ap.add_argument("--inside-jit", action="store_true",
                    help="call the kernel function inside an outer jax.jit, as a user's jitted "
                         "code does (XLA then compiles with the outer jit's options)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        import xprof  # noqa: F401
    except ImportError:
        raise SystemExit("bench.profile reads JAX's trace with xprof: pip install xprof")
    sys.path.insert(0, str(ROOT))
    import jax

    import ntkc
    from bench.suite import _xla_flops

    f, params, x1, x2 = _case(args)
    trace_axes = () if args.trace == "untraced" else (-1,)
    other = x2 if args.x2 == "given" else None
    start = time.perf_counter()
    if args.inside_jit:  # the kernel function called inside the user's own jit
        kernel_fn = ntkc.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, method=args.method)
        program = jax.jit(lambda a, b, p: kernel_fn(a, b, p))
        compiled = program.lower(x1, other, params).compile()
        executable, run = compiled, lambda: compiled(x1, other, params)
    else:  # the program a kernel function runs when called (ntkc's compiler options included)
        compiled = ntkc.compile(f, x1, other, params, trace_axes=trace_axes, vmap_axes=0,
                                method=args.method)
        executable, run = compiled.executable, lambda: compiled(x1, other, params)
    compile_s = time.perf_counter() - start
    result = profile(executable, run, args.runs)
    result.update(case=args.case, x2=args.x2, trace=args.trace, method=args.method,
                  compile_s=compile_s, inside_jit=args.inside_jit,
                  xla_flops=_xla_flops(executable) or float("nan"),
                  jax=jax.__version__, machine=platform.machine(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    print(f"{args.case}, x2 {args.x2}, {args.trace}, {args.method}, "
          f"{'inside a jit' if args.inside_jit else 'called directly'}, JAX {jax.__version__}, "
          f"compiled in {compile_s:.1f} s")
    print(table(result, args.top))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
