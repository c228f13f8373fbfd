"""``method="auto"``: each parameter leaf's method, from the structured plan and FLOP estimates.

Everything here traces abstractly (``jax.make_jaxpr``, ``jax.eval_shape``): choosing never
compiles a candidate program.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax

from ntkc import pipeline
from ntkc._args import leaf_dtype
from ntkc import _compat
from ntkc._problem import Config
from ntkc.ir import Fallback
from ntkc.methods import mixed, registry, structured
from ntkc.passes import capability
from ntkc.passes.assign import CostModel, LinearMap, OutputShape, assign
from ntkc.passes.cost import Cost, eqn_flops, eqn_values, jaxpr_flops, jaxpr_values
from ntkc.passes.path import PathMemoryError


def _forward_flops(f, config: Config, params, x1, x2, kwargs1, kwargs2, jaxprs=(None, None)):
    """FLOPs of one primal forward pass over the whole of x1 and of x2 (from f's jaxprs for
    them where given: the argument checks traced them already), and the entries of the values
    x1's computes."""
    # x is an argument, not a closure, so that jax.ShapeDtypeStruct inputs work (ntkc.compile)
    trace = lambda x, kwargs: jax.make_jaxpr(lambda p, x: f(p, x, **kwargs))(params, x)
    jaxpr1 = jaxprs[0] or trace(x1, kwargs1)
    flops1 = jaxpr_flops(jaxpr1)
    flops2 = flops1 if config.x2_is_x1 else jaxpr_flops(jaxprs[1] or trace(x2, kwargs2))
    return flops1, flops2, jaxpr_values(jaxpr1)


def cost_model(f, config: Config, params, x1, x2, kwargs1, kwargs2, schedule,
               jaxprs=(None, None)) -> CostModel:
    """The estimates' inputs for one call; ``schedule`` is the structured program's
    (``ntkc.ir.Schedule``, or None when it cannot be planned);
    ``jaxprs``: f's closed jaxprs for x1 and x2 where already traced."""
    b = config.batching
    n1, n2 = (b.size1, b.size2) if b is not None else (1, 1)
    flops1, flops2, values1 = _forward_flops(f, config, params, x1, x2, kwargs1, kwargs2,
                                             jaxprs)
    outputs = tuple(
        OutputShape(math.prod(a.shape1), math.prod(a.shape2),
                    math.prod(a.kernel_shape) * a.trace_size,
                    b is None or b.outputs[k] in a.free)
        for k, a in enumerate(config.axes))
    leaf_sizes = tuple(math.prod(jax.numpy.shape(l)) for l in jax.tree.leaves(params))
    records = None if schedule is None else schedule.records
    analyses = [r.analysis for r in records or () if r.kind == "analysis"]
    terms = None
    itemsize = max(leaf_dtype(l).itemsize for l in jax.tree.leaves(params))
    structured_bytes = None
    if records is not None:
        terms = [0.0] * len(leaf_sizes)
        for r in records:
            if r.kind == "term":
                terms[r.param_leaf] += r.path.cost.flops - r.path.repeated_flops
        dense = dense_fallbacks(records, (n1, n2), config.x2_is_x1, itemsize)
        for d in dense:
            terms[d.leaf] += d.flops
        terms = tuple(terms)
        # the operands and steps, and the largest dense rule's temporaries
        dense_bytes = max((d.bytes for d in dense), default=0.0)
        structured_bytes = tuple(b + dense_bytes for b in
                                 _structured_bytes(records, itemsize, config.x2_is_x1))
    linear = (LinearMap.from_analysis(analyses[0]) if analyses
              else LinearMap.uniform(len(leaf_sizes), 2 * flops1 / n1, values1 / n1))
    return CostModel(outputs, n1, n2, flops1 / n1, flops2 / n2, config.x2_is_x1, leaf_sizes,
                     linear, terms, itemsize, *(structured_bytes or (None, None)),
                     _unavailable(f, params, x1, kwargs1, jaxprs[0], records is not None),
                     _fixed_bytes(config, params, x1, x2))


def _fixed_bytes(config: Config, params, x1, x2) -> float:
    """The program's arguments (params and inputs) and the kernel it returns, in bytes."""
    kernels = sum(math.prod(a.kernel_shape) * jax.numpy.dtype(d).itemsize
                  for a, d in zip(config.axes, config.dtypes))
    arguments = jax.tree.leaves((params, x1, None if config.x2_is_x1 else x2))
    return float(sum(math.prod(jax.numpy.shape(a)) * leaf_dtype(a).itemsize for a in arguments)
                 + kernels)


def _unavailable(f, params, x1, kwargs1, jaxpr, planned: bool) -> frozenset:
    """The methods that cannot run ``f`` (read from its jaxpr, not by trying them): those that
    reverse every loop, where a while loop's carry depends on the parameters. Raises
    :class:`~ntkc.passes.capability.ReverseModeError` when no method is left."""
    if jaxpr is None:
        jaxpr = jax.make_jaxpr(lambda p, x: f(p, x, **kwargs1))(params, x1)
    loops = capability.while_loops(jaxpr, len(jax.tree.leaves(params)))
    if not loops:
        return frozenset()
    blocked = [m.name for m in registry.per_leaf_methods() if m.reverses_every_loop]
    if not planned:
        raise capability.error(loops, f"method='auto' ({' and '.join(blocked)}; the structured "
                                      "method could not be planned)")
    return frozenset(blocked)


def _structured_bytes(records, itemsize, same_inputs) -> tuple[float, float]:
    """``(every side's distinct operands (cotangents, factors) plus the largest contraction
    step, the factors plus each side's largest cotangent twice and the largest step)``: the
    operands all alive at once, or the cotangents contracted as their pass gives them (x2's
    operands are x1's when x2 is x1). Twice: XLA copies a use's cotangents into the layout of
    its weight-gradient product (``[S, O·C]`` for ``[O, S, C]``) while they are alive
    (ResNet-50, 224², N=1, O=128: the stage-1 cotangents next to their copies at the peak)."""
    factors, cotangents, step = {}, {}, 0.0
    for r in records:
        if r.kind != "term":
            continue
        step = max(step, r.path.cost.peak)
        for position, (labels, side) in enumerate(zip(r.labels, r.sides)):
            if side in (1, 2):
                first = r.sides.index(side)
                key = (1 if same_inputs else side, r.uses[side - 1], r.outputs[side - 1],
                       position - first)
                held = cotangents if position == first else factors
                held[key] = math.prod(r.sizes[l] for l in labels) * itemsize
    largest = {}
    for (side, *_), nbytes in cotangents.items():
        largest[side] = max(largest.get(side, 0.0), nbytes)
    everything = sum(factors.values()) + sum(cotangents.values()) + step
    return everything, sum(factors.values()) + 2 * sum(largest.values()) + step


def dense_fallbacks(records, sizes, same_inputs: bool, itemsize: int) -> list[Fallback]:
    """The uses that take the dense rule in the structured plan, each with its cost for its
    side's examples (``sizes``: the two sides' numbers of examples; x2 = x1: one dense rule
    serves both sides)."""
    analyses = [r.analysis for r in records if r.kind == "analysis"]
    found = {}
    for r in records:
        if r.kind != "term":
            continue
        for side, (u, structure) in enumerate(zip(r.uses, r.structure)):
            if structure == "dense":
                found[(u, 0 if same_inputs else side)] = r.param_leaf
    out = []
    for (u, side), leaf in found.items():
        eqn = analyses[0].traced.jaxpr.jaxpr.eqns[analyses[0].uses[u].eqn_index]
        n = sizes[side]
        out.append(Fallback(leaf, _compat.wrapped_primitive(eqn).name, _compat.source_line(eqn),
                            side + 1, n * _dense_rule_flops(analyses[0], u),
                            _dense_rule_values(analyses[0], u, n) * itemsize))
    return out


def _dense_rule_flops(analysis, u) -> float:
    """The dense fallback's cost per example: forward mode over every entry of the operand."""
    use = analysis.uses[u]
    eqn = analysis.traced.jaxpr.jaxpr.eqns[use.eqn_index]
    return math.prod(eqn.invars[use.operand].aval.shape) * eqn_flops(eqn)


def _dense_rule_values(analysis, u, n: int) -> float:
    """The dense fallback's working set for ``n`` examples, in entries: forward mode carries one
    tangent per entry of the operand through every value the equation computes, from the
    identity basis of the operand (1.1-1.3x XLA's temporaries on rolled scans)."""
    use = analysis.uses[u]
    eqn = analysis.traced.jaxpr.jaxpr.eqns[use.eqn_index]
    size = math.prod(eqn.invars[use.operand].aval.shape)
    # the identity basis and the operand's tangent (both |p| x |p|), and per example one tangent
    # per entry of p with its primal through the equation's values
    return 2 * size * size + 2 * n * size * eqn_values(eqn)


def schedule_structured(trace, config: Config, warn: bool = True):
    """The structured program's schedule (``ntkc.pipeline.schedule``), or None when it cannot
    be planned (with a warning, unless no contraction order fits ``memory_limit``).
    ``trace(config)`` evaluates the kernel program abstractly under ``config``."""
    try:
        return pipeline.schedule(trace, dataclasses.replace(config, method=structured.NAME,
                                                            leaf_methods=None))
    except PathMemoryError:
        return None  # no contraction order fits memory_limit: the structured method is out
    except capability.ReverseModeError:
        raise  # a while loop it would reverse: so would every other method
    except Exception as err:  # auto stays usable; the structured method reports its own errors
        if warn:
            warnings.warn(f"ntkc: method='auto' could not plan the structured method ({err}); "
                          "choosing between jacobian and ntvp", stacklevel=4)
        return None


def resolve(cost_model: CostModel, config: Config) -> Config | None:
    """``config`` with ``method="auto"`` resolved: one method, or ``"mixed"`` per leaf; None
    when nothing fits ``config.memory_limit``."""
    leaf_methods = assign(cost_model, config.memory_limit)
    if leaf_methods is None:
        return None
    if len(set(leaf_methods)) == 1:
        return dataclasses.replace(config, method=leaf_methods[0], leaf_methods=None)
    return dataclasses.replace(config, method=mixed.NAME, leaf_methods=leaf_methods)


def method_costs(cost_model: CostModel) -> dict[str, float]:
    """Estimated FLOPs of each method alone (all leaves), and of the mixed plan when it differs."""
    everything = range(len(cost_model.leaf_sizes))
    costs = {m: cost_model.group_cost(m, everything) for m in cost_model.methods}
    leaf_methods = assign(cost_model)
    if len(set(leaf_methods)) > 1:
        costs[mixed.NAME] = cost_model.cost(leaf_methods)
    return costs


def cotangent_cost(cost_model: CostModel) -> Cost:
    """The structured method's passes (primal and cotangents of every use), without its terms."""
    everything = range(len(cost_model.leaf_sizes))
    return Cost(flops=cost_model.group_cost(structured.NAME, everything)
                - sum(cost_model.terms or ()))
