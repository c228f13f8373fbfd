"""The structured-derivatives method: the ordered passes, from a Problem to its kernels.

trace (linearize) -> inline -> unroll short loops -> uses -> rules (in evaluate) -> network (einsum
per pair of uses).

Two stages: :func:`schedule` plans the program by abstract evaluation (each side's analysis and
every einsum's contraction order: a :class:`ntkc.ir.Schedule`); :func:`kernel` executes it inside
``jit`` from ``Config.schedule``, without tracing ``f`` or choosing an order again. Without a
schedule (``ntkc.gram``'s side programs, a per-leaf mix's structured group) :func:`kernel`
plans as it goes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ntkc._problem import Config, Problem
from ntkc.ir import AnalysisRecord, Schedule
from ntkc.passes.evaluate import evaluate_side
from ntkc.passes import capability
from ntkc.passes.conds import flatten_conds
from ntkc.passes.inline import inline
from ntkc.passes.network import Contraction, Side, output_kernel
from ntkc.passes.unroll import unroll_scans
from ntkc.passes.uses import Analysis, find_uses
from ntkc.trace import Traced, check_real_tangents, trace_linear


def analyze(fn, params, inputs, axes) -> Analysis:
    """trace -> inline -> uses, on one example (under vmap_axes) or the whole batch."""
    if axes is not None:
        inputs = [
            jax.ShapeDtypeStruct(tuple(s for i, s in enumerate(x.shape) if i != ax), x.dtype)
            for x, ax in zip(inputs, axes)
        ]
    traced = trace_linear(fn, params, inputs)
    traced = unroll_scans(Traced(inline(traced.jaxpr), traced.n_params, traced.n_inputs))
    traced = flatten_conds(traced)
    check_real_tangents(traced)
    analysis = find_uses(traced)
    capability.check_structured(analysis)
    return analysis


def _evaluate(analysis, params, inputs, axes, strict) -> Side:
    p_leaves = jax.tree.leaves(params)
    specs = {}

    def run(ins):
        arrays, specs["value"] = evaluate_side(analysis, p_leaves, ins, strict)
        return arrays

    if axes is None:
        (factors, cots) = run(inputs)
    else:
        factors, cots = jax.vmap(run, in_axes=(axes,))(inputs)
    return Side(analysis, factors, cots, specs["value"], axes is not None)


def side(prob: Problem, no: int, like: Side | None = None) -> Side:
    """Side ``no`` (1 or 2) of the structured program: factors and cotangents of every use.

    ``like``: another side whose analysis is reused when it applies (per-example analyses, or
    inputs of the same shapes), which saves a second trace. With ``prob.config.schedule`` the
    planned analysis is used (``f`` is not traced again); a planning trace
    (``prob.config.records`` a list) records the analysis it makes.
    """
    fn, inputs, axes = prob.side_fn(no)
    planned = prob.config.schedule and prob.config.schedule.analysis(no)
    if planned is not None and _same_shapes(planned, inputs, axes):
        analysis = planned  # (a Gram block's side may have other shapes than the planned call)
    elif like is not None and _same_shapes(like.analysis, inputs, axes):
        analysis = like.analysis
    else:
        analysis = analyze(fn, prob.params, inputs, axes)
        if prob.config.records is not None:
            prob.config.records.append(AnalysisRecord(analysis, no, axes is not None))
    return _evaluate(analysis, prob.params, inputs, axes, prob.config.strict)


def _same_shapes(analysis: Analysis, inputs, axes) -> bool:
    """Whether an analysis traced for inputs of these shapes (per example under ``axes``)."""
    shapes = [jnp.shape(a) if axes is None or axes[k] is None
              else tuple(n for d, n in enumerate(jnp.shape(a)) if d != axes[k])
              for k, a in enumerate(inputs)]
    return [v.aval.shape for v in analysis.traced.input_vars] == shapes


def combine(config: Config, n_params: int, side1: Side, side2: Side, hoist=None) -> list:
    """Θ per output leaf (a flat list) from two evaluated sides; ``config`` gives the layout
    (``config.records``: the list its contractions are recorded to, if any; ``config.schedule``:
    the orders they take, if planned); ``hoist``: see :class:`ntkc.passes.network.Contraction`."""
    planned = None if config.schedule is None else iter(config.schedule.contractions)
    contraction = Contraction(records=config.records, planned=planned, hoist=hoist)
    out = []
    for k, axes in enumerate(config.axes):
        batch_axis = config.batching.outputs[k] if config.batching is not None else None
        out.append(output_kernel(k, axes, batch_axis, n_params, side1, side2,
                                 config.memory_limit, config.by_param, contraction))
    return out


def kernel(prob: Problem) -> list:
    """Θ per output leaf (a flat list) by structured derivatives."""
    side1 = side(prob, 1)
    side2 = side1 if prob.same_inputs else side(prob, 2, like=side1 if prob.same_closure() else None)
    return combine(prob.config, len(jax.tree.leaves(prob.params)), side1, side2)


def schedule(trace: Callable[[Config], Any], config: Config) -> Schedule:
    """Plans the structured program: ``trace(config)`` evaluates the kernel program abstractly
    (``jax.eval_shape``, no compilation) under ``config``; returns the analyses and contraction
    orders it chose, which ``kernel`` executes when given as ``Config.schedule``."""
    records = []
    trace(dataclasses.replace(config, records=records, schedule=None))
    return Schedule(tuple(records))
