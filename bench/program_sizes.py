"""The compiled kernel programs of the benchmark models at one commit: XLA's FLOP count and the
number of HLO instructions per (model, trace_axes, method), printed one line each.

Run at two commits (each exported by ``git archive``, ``PYTHONPATH`` set to it) and compare the
lines: a load-independent check that a change did not make a program bigger (issue 12, item 9,
next to ``bench/before_after.py``'s timings).

    PYTHONPATH=/tmp/rev python bench/program_sizes.py
"""

import itertools
import re

import ntkc
from bench import models

out = []
for name in ("mixer", "vit", "mlp", "cnn", "wrn"):
    m = models.MODELS[name]()
    f, params, x = m[0], m[1], m[2]
    for trace in ((-1,), ()):
        for method, x2 in itertools.product(("structured", "jacobian"), (None, x[::-1])):
            c = ntkc.compile(f, x, x2, params, trace_axes=trace, vmap_axes=0, method=method)
            text = c.executable.as_text()
            ops = len(re.findall(r"^\s+\S+ = ", text, re.M))
            ca = c.executable.cost_analysis()
            ca = ca[0] if isinstance(ca, list) else ca
            cross = "x2=None" if x2 is None else "x2 given"
            out.append(f"{name} {trace} {method} {cross} flops={ca.get('flops', 0):.4g} ops={ops}")
print("\n".join(out))
