"""One process, one measurement: ntkc's structured kernel timed with XLA:CPU's own convolutions
(ntkc's CPU option, ``ntkc._compat._CPU_CONV_OPTIONS``) or with YNNPACK's (jaxlib's default
since 0.10), for choosing the option per program in alternating processes.

    python bench/conv_option.py CASE none|given xla|ynn REPEATS

CASE: a case of bench.paper (``resnet18_8x8``, ``wrn28_10``, ...) or ``suite:NAME`` for a model
of bench/models.py at its bench sizes. Prints one JSON line.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())  # this checkout's ntkc and bench

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ntkc  # noqa: E402
from ntkc import _compat  # noqa: E402
from bench.time_resnet18 import timed_calls  # noqa: E402


def build(case):
    if case.startswith("suite:"):
        from bench import models
        f, params, x = getattr(models, case.split(":", 1)[1])()
        n = x.shape[0]
        return f, params, x[: n // 2], x[n // 2:]
    from bench import paper, paper_models
    model, kwargs = paper.CASES[case]
    return getattr(paper_models, model)(**kwargs)


def main(case, x2, option, repeats):
    if option == "ynn":
        _compat._CPU_CONV_OPTIONS = ()  # jaxlib's default: YNNPACK convolutions
    f, params, x1, x2_given = build(case)
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")
    other = None if x2 == "none" else x2_given
    first, times, kernel = timed_calls(lambda: kfn(x1, other, params), repeats)
    print(json.dumps(dict(case=case, x2=x2, option=option, jax=jax.__version__,
                          options=kfn.compiler_options(x1, other, params), first=first,
                          times=times, median=statistics.median(times),
                          load=os.getloadavg()[0], checksum=float(np.asarray(kernel).sum()))))


if __name__ == "__main__":
    main(*sys.argv[1:5])
