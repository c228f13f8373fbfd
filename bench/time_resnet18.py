"""One process, one measurement: ntkc's structured ResNet-18 kernel (224², Flax, bench/paper_models)
timed from the checkout in the current directory, for before/after comparisons of two commits
in alternating processes (run it from a ``git worktree`` of each; prints one JSON line).

    python bench/time_resnet18.py N_x_O traced|untraced none|given REPEATS [MEMORY_LIMIT_GIB]
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())  # this checkout's ntkc and bench, not the installed one

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ntkc  # noqa: E402
from bench import paper_models  # noqa: E402


def timed_calls(call, repeats):
    """``(seconds of the first call, seconds of each of the next repeats, the last result)``."""
    start = time.perf_counter()
    result = jax.block_until_ready(call())
    first = time.perf_counter() - start
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        result = jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return first, times, result


def main(case, trace, x2, repeats, limit_gib=None):
    n, o = map(int, case.split("x"))
    f, params, x1, x2_given = paper_models.resnet18(n=n, outputs=o)
    limit = None if limit_gib is None else int(float(limit_gib) * 2**30)
    kfn = ntkc.ntk_fn(f, (-1,) if trace == "traced" else (), vmap_axes=0, method="structured",
                      memory_limit=limit)
    other = None if x2 == "none" else x2_given
    first, times, kernel = timed_calls(lambda: kfn(x1, other, params), repeats)
    print(json.dumps(dict(where=os.getcwd(), ntkc=ntkc.__file__, case=case, trace=trace, x2=x2,
                          memory_limit_gib=limit_gib,
                          first=first, times=times, median=statistics.median(times),
                          load=os.getloadavg()[0], checksum=float(np.asarray(kernel).sum()))))


if __name__ == "__main__":
    main(*sys.argv[1:6])
