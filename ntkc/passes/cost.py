"""Costs from shapes alone: an immutable :class:`Cost` that adds, and the cost of einsum steps.

``a + b`` sums FLOPs and bytes moved and keeps the larger peak: steps (and terms) run one after
another, each one's intermediates freed before the next.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from jax.extend import core as jex_core

from ntkc._compat import sub_jaxprs
from ntkc.rules import flops_rule


@dataclasses.dataclass(frozen=True)
class Cost:
    """Estimated cost of a computation.

    Attributes:
      flops: floating-point operations (a multiply-add counts 2).
      bytes: bytes read and written.
      peak: the most bytes live at once.
    """

    flops: float = 0
    bytes: float = 0
    peak: float = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, max(self.peak, other.peak))

    def __radd__(self, other):
        return self if other == 0 else self.__add__(other)

    def __repr__(self) -> str:
        return f"Cost(flops={self.flops:.3g}, bytes={self.bytes:.3g}, peak={self.peak:.3g})"


def size_of(labels: Iterable, sizes: Mapping) -> int:
    return math.prod(sizes[l] for l in labels)


def contraction_cost(
    inputs: Sequence[Sequence], output: Sequence, sizes: Mapping, itemsize: int = 4
) -> Cost:
    """One einsum step ``inputs -> output``.

    Labels that only one operand carries (and the output does not) are summed out of that
    operand first, as ``jnp.einsum`` does: ``|operand|`` FLOPs each. The rest loops over every
    remaining label once: ``2 * Π sizes`` FLOPs when a label is summed (a multiply-add per
    point), else ``(len(inputs) - 1) * Π sizes`` (products only). Bytes are the operands plus
    the result; the peak is the same (operands and result live at once).
    """
    inputs = [tuple(i) for i in inputs]
    flops = 0
    if len(inputs) > 1:
        reduced = []
        for k, labels in enumerate(inputs):
            elsewhere = set(output).union(*(set(l) for j, l in enumerate(inputs) if j != k))
            own = [l for l in labels if l not in elsewhere]
            if own:
                flops += size_of(labels, sizes)
                labels = tuple(l for l in labels if l in elsewhere)
            reduced.append(labels)
    else:
        reduced = inputs
    involved = set().union(*map(set, reduced)) | set(output)
    points = size_of(involved, sizes)
    summed = involved - set(output)
    flops += (2 if summed else max(len(reduced) - 1, 1)) * points
    moved = (sum(size_of(l, sizes) for l in inputs) + size_of(output, sizes)) * itemsize
    return Cost(flops, moved, moved)


# ----------------------------------------------------------------------------- jaxpr FLOPs


def eqn_flops(eqn) -> float:
    """Approximate FLOPs of one equation: matmuls and convolutions exactly (a multiply-add counts
    2), one per output element for anything else; sub-jaxprs (a scan's body times its length)
    recursively."""
    subs = sub_jaxprs(eqn)
    if subs:
        return eqn.params.get("length", 1) * sum(jaxpr_flops(s) for s in subs)
    rule = flops_rule(eqn.primitive)
    if rule is not None:
        return rule(eqn)
    return sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))


def jaxpr_flops(jaxpr) -> float:
    """Approximate FLOPs of a (closed) jaxpr: the sum of :func:`eqn_flops`."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    return sum(eqn_flops(e) for e in jaxpr.eqns)


def eqn_values(eqn) -> float:
    """Entries of the values alive while one equation runs: its outputs (a scan's stacked ys
    included) and one pass of its sub-jaxprs' values (a loop's iterations run one at a time),
    the working set of differentiating it densely in forward mode."""
    inner = sum(jaxpr_values(sub) for sub in sub_jaxprs(eqn))
    return inner + sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))


def jaxpr_values(jaxpr) -> float:
    """Entries of all the values a (closed) jaxpr computes (:func:`eqn_values` summed)."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    return sum(eqn_values(e) for e in jaxpr.eqns)


# ----------------------------------------------------------------------------- values alive


def last_reads(jaxpr) -> dict:
    """Per variable of a jaxpr, the index of the last equation that reads it (the number of
    equations for its outputs: alive to the end)."""
    last = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jex_core.Literal):
                last[v] = k
    for v in jaxpr.outvars:
        if not isinstance(v, jex_core.Literal):
            last[v] = len(jaxpr.eqns)
    return last


def live_peak(sizes, born, dies) -> float:
    """The most entries alive at once when equations run in order and value ``i`` (``sizes[i]``
    entries) lives from equation ``born[i]`` through ``dies[i]``: a liveness scan, the least
    memory any schedule of that order needs."""
    sizes, born, dies = (np.asarray(a).reshape(-1) for a in (sizes, born, dies))
    if not sizes.size:
        return 0.0
    delta = np.zeros(int(max(dies.max(), born.max())) + 2)
    np.add.at(delta, born.astype(int), sizes)
    np.add.at(delta, dies.astype(int) + 1, -sizes)
    return float(np.cumsum(delta).max())
