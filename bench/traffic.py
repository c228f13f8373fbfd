"""XLA's FLOPs and bytes accessed of a structured kernel program (compiled, not run), of ntkc or
of neural-tangents, for the paper's cases, as a user's jit compiles it (``x2=None`` static), one
JSON line per case and x2; and this machine's memory bandwidth.

    python bench/traffic.py ntkc resnet50_8x8,vit_s16             # any environment with ntkc
    .venv-nt-jax092/bin/python bench/traffic.py nt resnet50_8x8   # neural-tangents (compare_nt's)
    python bench/traffic.py bandwidth

"bytes accessed" is XLA's count of every op's operands and results (a fusion's once), with no
cache: the traffic of a program whose arrays do not fit in cache. Divided by the bandwidth of a
large elementwise op (``bandwidth``) it is the time the program's memory traffic takes, beside
its FLOPs at the measured matmul and convolution rates (``bench.paper.rates``).
"""

import json
import os
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


def kernel_fn(lib: str, f):
    if lib == "nt":
        from bench import _nt_shim
        from bench.compare_nt import NT_IMPL

        return _nt_shim.import_nt().empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
                                                     implementation=NT_IMPL["structured"])
    import ntkc

    return ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")


def counts(lib: str, case: str, given: bool) -> dict:
    import jax

    from bench import paper, paper_models
    from bench.compare_nt import lower

    model, kwargs = paper.CASES[case]
    f, params, x1, x2 = paper_models.MODELS[model](**kwargs)
    lowered, _ = lower(jax, kernel_fn(lib, f), x1, x2 if given else None, params)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"lib": lib, "case": case, "x2": "given" if given else "None", "trace_axes": [],
            "jax": jax.__version__, "flops": cost.get("flops"),
            "bytes_accessed": cost.get("bytes accessed")}


def main(argv) -> int:
    if argv[:1] == ["bandwidth"]:
        import jax

        print(json.dumps({"jax": jax.__version__, "bandwidth_gbps": bandwidth()}))
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
