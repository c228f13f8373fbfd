"""A per-leaf mix of methods: each group of parameter leaves computed by its own method.

Θ = Σ_leaves Θ_leaf, so a group's part is the kernel of ``f`` as a function of that group's
leaves alone (the others held fixed), computed by the group's method; the parts add up.
"""

from __future__ import annotations

import dataclasses

from ntkc import _leaves
from ntkc._problem import Problem
from ntkc.methods import registry

NAME = "mixed"


def restrict(prob: Problem, leaves: list[int], method: str) -> Problem:
    """``prob`` as a function of the parameter leaves ``leaves`` only, for ``method``."""
    f, group = _leaves.restrict(prob.f, prob.params, leaves)
    # its own program (of the restricted f): the whole f's structured schedule does not apply
    config = dataclasses.replace(prob.config, method=method, leaf_methods=None, schedule=None)
    return dataclasses.replace(prob, f=f, params=group, config=config)


def kernel(prob: Problem) -> list:
    """Θ per output leaf (a flat list; per-leaf lists with ``by_param``) by the mixed plan
    ``prob.config.leaf_methods``, each group by its registered method's kernel."""
    methods = prob.config.leaf_methods
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(methods):
        groups.setdefault(m, []).append(i)
    parts = {m: registry.get(m).kernel(restrict(prob, leaves, m)) for m, leaves in groups.items()}
    if not prob.config.by_param:
        return [sum(parts[m][k] for m in groups) for k in range(len(prob.axes))]
    out = []
    for k in range(len(prob.axes)):
        per_leaf = [None] * len(methods)
        for m, leaves in groups.items():
            for i, part in zip(leaves, parts[m][k]):
                per_leaf[i] = part
        out.append(per_leaf)
    return out


# Not per leaf: it is what a per-leaf choice runs. Its estimates are its groups' summed
# (CostModel.cost, CostModel.peak), and ntkc.gram calls the kernel function per tile.
registry.register(registry.Method(NAME, kernel, per_leaf=False))
