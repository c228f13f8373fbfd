"""Structured derivatives: each use of a parameter's compact factors, contracted with the
cotangents of the other side's use by one einsum per pair of uses (``ntkc.pipeline``).

Cost: the cotangent passes (without the uses' weight gradients) plus the plan's terms, counted
exactly from their contraction orders.
"""

from __future__ import annotations

import dataclasses

import jax

from ntkc import pipeline
from ntkc.methods.registry import GramSides, Method, register

NAME = "structured"


def flops(cost_model, leaves) -> float:
    """s₁·(R − U) + s₂·(R − U): cotangents of every output entry, not weight gradients; plus
    the plan's terms of ``leaves``."""
    linear = cost_model.linear
    return (cost_model.primal_passes(shared=True) + sum(cost_model.terms[i] for i in leaves)
            + cost_model.reverse_passes(linear.reached(leaves) - linear.used(leaves)))


def working_set(cost_model, leaves) -> float:
    """The lesser of two bounds on the operands alive at once, plus the flipped convolution
    kernels of the cotangent passes: every side's operands (cotangents, factors) and the largest
    contraction step; or the factors, each side's cotangent pass (its residuals and live
    cotangents) with its largest use's cotangent and that cotangent's layout copy, and the
    largest step. XLA contracts each use's cotangents as the pass gives them: where they are
    many and large the second is the tighter (ResNet-50, 224², N=1, O=128: XLA 4.3 / 7.0 GiB
    with x2 None / given, the first bound 11.7 / 22.4, the second 4.3 / 7.6), on small models
    the first (bench/estimates.py)."""
    m, linear = cost_model, cost_model.linear
    copies = linear.copies(leaves) * m.itemsize
    everything = m.structured_bytes or 0.0
    if m.structured_streamed is None:
        return everything + copies
    tangents, residuals = linear.tangents(leaves), linear.residuals(leaves)
    passes = m.examples1 * residuals + sum(o.size1 for o in m.outputs) * tangents
    if not m.same_inputs:
        passes += m.examples2 * residuals + sum(o.size2 for o in m.outputs) * tangents
    return min(everything, m.structured_streamed + passes * m.itemsize) + copies


def gram_side(prob) -> tuple[list, tuple]:
    """A block's factors and cotangents; static: the side without them, and their tree."""
    side = pipeline.side(prob, 1)
    arrays, treedef = jax.tree.flatten((side.factors, side.cotangents))
    return arrays, (dataclasses.replace(side, factors=None, cotangents=None), treedef)


def gram_pair(config, static, arrays1, arrays2, hoist=None) -> list:
    """The kernel of two blocks' sides (whose shapes may differ from the call the schedule
    planned: the contraction orders are chosen for them). ``arrays2 is arrays1``: a block paired
    with itself, one side, so the orders may compute x2's repeated steps as x1's (``mirror`` in
    ``ntkc.passes.path``)."""
    template, treedef = static
    config = dataclasses.replace(config, schedule=None)

    def side(arrays):
        factors, cotangents = jax.tree.unflatten(treedef, arrays)
        return dataclasses.replace(template, factors=factors, cotangents=cotangents)

    side1 = side(arrays1)
    side2 = side1 if arrays2 is arrays1 else side(arrays2)
    return pipeline.combine(config, template.analysis.traced.n_params, side1, side2, hoist)


register(Method(NAME, pipeline.kernel, flops, working_set,
                gram=GramSides(gram_side, gram_pair, hoists=True), needs_plan=True))
