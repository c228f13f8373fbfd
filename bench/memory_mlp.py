"""Peak memory of structured against jacobian on the paper's fully-connected case.

3 hidden layers of width W (default 2048), 784 inputs, 10 outputs, trace_axes=(), N=16, float32,
vmap_axes=0. Peak memory is XLA's own accounting of the compiled program
(``memory_analysis()``: arguments + outputs + temporaries), so the jacobian program is compiled
but never run (it would need gigabytes). Structured is also run and timed.

    python bench/memory_mlp.py [--width 2048] [--n 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import ntkc


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b[None, :])
    w, b = params[-1]
    return x @ w + b[None, :]


def make(width, n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [784, width, width, width, 10]
    params = [
        (jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32), jnp.zeros(b, jnp.float32))
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    x = jnp.asarray(rng.standard_normal((n, 784)), jnp.float32)
    return params, x


def peak_bytes(method, params, x):
    fn = ntkc.ntk_fn(mlp, trace_axes=(), vmap_axes=0, method=method)
    compiled = jax.jit(lambda x, p: fn(x, None, p)).lower(x, params).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return compiled, total, m.temp_size_in_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args(argv)
    params, x = make(args.width, args.n)
    n_params = sum(a.size for a in jax.tree.leaves(params))
    rows = {}
    for method in ("structured", "jacobian"):
        compiled, total, temp = peak_bytes(method, params, x)
        row = {"peak_bytes": total, "temp_bytes": temp}
        if method == "structured":
            compiled(x, params).block_until_ready()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                compiled(x, params).block_until_ready()
                times.append(time.perf_counter() - t)
            row["run_s_median"] = float(np.median(times))
        rows[method] = row
    dense_jacobian = args.n * 10 * n_params * 4
    report = {
        "case": f"MLP 784-{args.width}x3-10, N={args.n}, trace_axes=(), float32, vmap_axes=0",
        "params": n_params,
        "dense_jacobian_bytes": dense_jacobian,
        "jax": jax.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {jax.devices()[0].device_kind}",
        **rows,
    }
    print(json.dumps(report, indent=2))
    ratio = rows["jacobian"]["peak_bytes"] / rows["structured"]["peak_bytes"]
    print(f"peak memory: structured {rows['structured']['peak_bytes'] / 2**20:.1f} MiB, "
          f"jacobian {rows['jacobian']['peak_bytes'] / 2**20:.1f} MiB ({ratio:.0f}x); "
          f"one dense Jacobian J(x): {dense_jacobian / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
