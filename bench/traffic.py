"""XLA's FLOPs and bytes accessed of a structured kernel program (compiled, not run), of ntkc or
of neural-tangents, for the paper's cases, as a user's jit compiles it (``x2=None`` static), one
JSON line per case and x2; and this machine's memory bandwidth.

    python bench/traffic.py ntkc resnet50_8x8,vit_s16             # any environment with ntkc
    .venv-nt-jax092/bin/python bench/traffic.py nt resnet50_8x8   # neural-tangents (compare_nt's)
    python bench/traffic.py bandwidth
    python bench/traffic.py ops ntkc resnet18_8x8 given [TOP] [--traced]  # the ops moving the bytes

"bytes accessed" is XLA's count of every op's operands and results (a fusion's once), with no
cache: the traffic of a program whose arrays do not fit in cache. Divided by the bandwidth of a
large elementwise op (``bandwidth``) it is the time the program's memory traffic takes, beside
its FLOPs at the measured matmul and convolution rates (``bench.paper.rates``).
"""

import collections
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.getcwd())  # this checkout's ntkc and bench


def bandwidth() -> float:
    """GB/s of ``x * 1.5 + y`` on 400 MB float32 arrays (two read, one written), best of 7."""
    import jax
    import jax.numpy as jnp

    n = 100 * 2**20
    x, y = jnp.ones((n,), jnp.float32), jnp.full((n,), 2.0, jnp.float32)
    fn = jax.jit(lambda x, y: x * 1.5 + y)
    fn(x, y).block_until_ready()
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        fn(x, y).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 3 * 4 * n / best / 1e9


def kernel_fn(lib: str, f, trace_axes=()):
    if lib == "nt":
        from bench import _nt_shim
        from bench.compare_nt import NT_IMPL

        return _nt_shim.import_nt().empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0,
                                                     implementation=NT_IMPL["structured"])
    import ntkc

    return ntkc.ntk_fn(f, trace_axes, vmap_axes=0, method="structured")


def _compiled(lib: str, case: str, given: bool, trace_axes=()):
    """The case's structured kernel program, compiled as a user's jit compiles it."""
    import jax

    from bench import paper, paper_models
    from bench.compare_nt import lower

    model, kwargs = paper.CASES[case]
    f, params, x1, x2 = paper_models.MODELS[model](**kwargs)
    lowered, _ = lower(jax, kernel_fn(lib, f, trace_axes), x1, x2 if given else None, params)
    return lowered.compile()


def counts(lib: str, case: str, given: bool) -> dict:
    import jax

    cost = _compiled(lib, case, given).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"lib": lib, "case": case, "x2": "given" if given else "None", "trace_axes": [],
            "jax": jax.__version__, "flops": cost.get("flops"),
            "bytes_accessed": cost.get("bytes accessed")}


_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4,
             "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) (\w[\w-]*)\((.*?)\)(.*)$")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_TRIVIAL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def _bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays)."""
    return sum(_ITEMSIZE.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY.findall(shape))


def op_bytes(hlo_text: str) -> list[dict]:
    """Each top-level op of an optimized HLO module (not the ops inside a fusion) with the bytes
    of its operands and result, as XLA's "bytes accessed" counts a fusion (once, at its
    boundary), and what it does: its opcode, or a fusion's kind and the non-elementwise ops
    inside it. Ops inside while loops are counted once, not per iteration."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) \(.*\{$", line)
        if header:
            current = computations[header.group(1)] = {"ops": []}
        elif line.startswith("}"):
            current = None
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current["ops"].append(m.groups())
    fused = {c for ops in computations.values() for *_, rest in ops["ops"]
             for c in re.findall(r"calls=%(\S+?),", rest + ",")}
    rows = []
    for cname, comp in computations.items():
        if cname in fused or not comp["ops"] or _is_reducer(comp):
            continue
        shapes = {n: shape for n, shape, *_ in comp["ops"]}
        for n, shape, opcode, operands, rest in comp["ops"]:
            if opcode in _TRIVIAL:
                continue
            read = sum(_bytes(shapes.get(o.strip().lstrip("%"), ""))
                       for o in operands.split(",") if o.strip().startswith("%"))
            what = opcode
            if opcode == "fusion":
                kind = re.search(r"kind=(\w+)", rest)
                called = re.search(r"calls=%([^,\s]+)", rest)
                inside = sorted({op for _, _, op, _, _ in
                                 computations.get(called.group(1) if called else "", {}).get(
                                     "ops", ()) if op in _NOTABLE})
                what = f"fusion {kind.group(1) if kind else ''} {'+'.join(inside)}".strip()
            rows.append({"name": n, "computation": cname, "what": what, "shape": shape,
                         "bytes": read + _bytes(shape)})
    return rows


_NOTABLE = {"convolution", "dot", "transpose", "reduce", "copy", "pad", "slice",
            "dynamic-slice", "dynamic-update-slice", "concatenate", "reduce-window",
            "select-and-scatter", "gather", "scatter", "reverse"}


def _is_reducer(comp) -> bool:
    """A reduce's scalar combiner (``to_apply``), not a computation that runs ops."""
    return all(shape.startswith(("f32[]", "f64[]", "s32[]", "pred[]", "bf16[]", "f16[]"))
               for _, shape, *_ in comp["ops"])


def ops(lib: str, case: str, given: bool, top: int = 25, trace_axes=()) -> dict:
    """The case's structured program's ops by bytes moved, grouped by what they do."""
    import jax

    rows = op_bytes(_compiled(lib, case, given, trace_axes).as_text())
    groups = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        groups[r["what"]][0] += r["bytes"]
        groups[r["what"]][1] += 1
    total = sum(r["bytes"] for r in rows)
    return {"lib": lib, "case": case, "x2": "given" if given else "None",
            "trace_axes": list(trace_axes), "jax": jax.__version__, "gb": total / 1e9,
            "groups": sorted(([w, b / 1e9, n] for w, (b, n) in groups.items()),
                             key=lambda g: -g[1])[:top],
            "largest": [[r["what"], r["shape"], r["bytes"] / 1e9] for r in
                        sorted(rows, key=lambda r: -r["bytes"])[:top]]}


def main(argv) -> int:
    if argv[:1] == ["bandwidth"]:
        import jax

        print(json.dumps({"jax": jax.__version__, "bandwidth_gbps": bandwidth()}))
        return 0
    traced = "--traced" in argv
    argv = [a for a in argv if a != "--traced"]
    if argv[:1] == ["ops"] and len(argv) in (4, 5) and argv[1] in ("ntkc", "nt"):
        report = ops(argv[1], argv[2], argv[3] == "given", *map(int, argv[4:]),
                     trace_axes=(-1,) if traced else ())
        print(json.dumps({k: v for k, v in report.items() if k not in ("groups", "largest")}))
        for title in ("groups", "largest"):
            print(f"# {title}")
            for row in report[title]:
                print("  ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
        return 0
    if len(argv) != 2 or argv[0] not in ("ntkc", "nt"):
        print(__doc__)
        return 2
    for case in argv[1].split(","):
        for given in (False, True):
            print(json.dumps(counts(argv[0], case, given)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
