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
    """Every side's operands (cotangents, factors) and the largest contraction step, and the
    flipped convolution kernels of the cotangent passes."""
    copies = cost_model.linear.copies(leaves) * cost_model.itemsize
    return (cost_model.structured_bytes or 0.0) + copies


def gram_side(prob) -> tuple[list, tuple]:
    """A block's factors and cotangents; static: the side without them, and their tree."""
    side = pipeline.side(prob, 1)
    arrays, treedef = jax.tree.flatten((side.factors, side.cotangents))
    return arrays, (dataclasses.replace(side, factors=None, cotangents=None), treedef)


def gram_pair(config, static, arrays1, arrays2, hoist=None) -> list:
    """The kernel of two blocks' sides (whose shapes may differ from the call the schedule
    planned: the contraction orders are chosen for them)."""
    template, treedef = static
    config = dataclasses.replace(config, schedule=None)

    def side(arrays):
        factors, cotangents = jax.tree.unflatten(treedef, arrays)
        return dataclasses.replace(template, factors=factors, cotangents=cotangents)

    return pipeline.combine(config, template.analysis.traced.n_params, side(arrays1),
                            side(arrays2), hoist)


register(Method(NAME, pipeline.kernel, flops, working_set,
                gram=GramSides(gram_side, gram_pair, hoists=True), needs_plan=True))
