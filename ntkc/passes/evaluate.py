"""Evaluate one side (x1 or x2) of the structured program: residuals, factors and cotangents.

For each use the rule's factors are evaluated on the residuals, and ∂f/∂y for every use output is
obtained by one reverse pass of the downstream linear map per output basis vector (the
N·O·[FP] part of the cost). Under ``vmap_axes`` this runs per example, inside ``vmap``.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ntkc._compat import Literal, bind, read, wrapped_primitive
from ntkc.ir import Form, identity_form
from ntkc.passes.uses import Analysis
from ntkc.rules import apply_linear, dense_forms, lookup


class UnsupportedPrimitiveError(NotImplementedError):
    """Raised under ``strict=True`` for a parameter use that has no structured rule."""


def _fallback(name: str, strict: bool, why: str):
    if strict:
        raise UnsupportedPrimitiveError(
            f"primitive {name!r} has no structured rule ({why}) and strict=True; "
            "pass strict=False to use the dense fallback, or register a rule with ntkc.register_rule"
        )
    # one message per primitive, from one place: Python's default filter shows it once
    warnings.warn(
        f"ntkc: no structured rule for primitive {name!r} ({why}); using the dense Jacobian "
        "of that equation (correct, slower)",
        stacklevel=2,
    )


def use_outvars(analysis: Analysis, u):
    jaxpr = analysis.traced.jaxpr.jaxpr
    if u.eqn_index is None:
        return [jaxpr.outvars[u.operand]]
    return list(jaxpr.eqns[u.eqn_index].outvars)


def _forms(analysis, u, env, tangent_vars, strict) -> list[Form]:
    jaxpr = analysis.traced.jaxpr.jaxpr
    if u.eqn_index is None:
        return [identity_form(len(jaxpr.outvars[u.operand].aval.shape))]
    eqn = jaxpr.eqns[u.eqn_index]
    operands = [
        None if (not isinstance(v, Literal) and v in tangent_vars) else read(env, v)
        for v in eqn.invars
    ]
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    outs = [v.aval for v in eqn.outvars]
    rule = lookup(eqn.primitive)
    forms = None if rule is None else rule(operands, u.operand, outs, shapes, eqn.params)
    if forms is None:
        wrapped = wrapped_primitive(eqn)  # in a cond branch: the primitive it wraps
        _fallback(wrapped.name, strict, "no rule" if lookup(wrapped) is None else "rule declined")
        forms = dense_forms(eqn, operands, u.operand, eqn.invars[u.operand].aval)
    return forms


def _pick(ys, mask):
    return [[y for y, m in zip(row, ms) if m] for row, ms in zip(ys, mask)]


def _merge(picked, others, mask):
    out = []
    for row, other, ms in zip(picked, others, mask):
        it = iter(row)
        out.append([next(it) if m else o for o, m in zip(other, ms)])
    return out


_SAME_WIDTH_INT = {1: jnp.int8, 2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


@jax.custom_jvp
def materialised(values: list, token) -> list:
    """``values`` unchanged, as the outputs of a loop that XLA cannot unroll (its trip count, 1,
    depends on ``token``'s bits), so that XLA stores them once instead of fusing the ops that
    compute them into every consumer. The cotangent pass reads each residual (a ReLU mask, a
    BatchNorm's per-channel scale) once per output cotangent; fused into the pass, XLA:CPU
    recomputes the forward chain behind it that many times (ResNet-50's stage 1 at O=128:
    three BatchNorm affines per element of every ``[128, 56, 56, 256]`` cotangent). Identity
    for differentiation (``jax.grad`` through a kernel)."""
    first = jnp.ravel(token)[0]
    bits = jax.lax.bitcast_convert_type(first, _SAME_WIDTH_INT[first.dtype.itemsize])
    trips = 1 + jnp.minimum(bits & 1, 0).astype(jnp.int32)  # always 1; XLA does not fold it
    return jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, c[2], c[2]),
                              (jnp.int32(0), [jnp.zeros_like(v) for v in values], values))[1]


@materialised.defjvp
def _materialised_jvp(primals, tangents):
    (values, token), (dvalues, _) = primals, tangents
    return materialised(values, token), dvalues


# A float residual larger than this (entries per example) is left to XLA (stored or fused):
# materialising every residual held ViT-S/16's attention and MLP activations at once, 2.4x its
# memory (1.02 -> 2.42 GiB, x2 given) for no gain in time.
SMALL_RESIDUAL = 2**16


def _cheap_to_store(value) -> bool:
    """A mask (one byte an entry) or a small array (a per-channel vector): stored once, it
    costs little memory, and recomputed per cotangent it can cost the pass's time."""
    return jnp.result_type(value) == jnp.bool_ or jnp.size(value) <= SMALL_RESIDUAL


def _read_once(analysis: Analysis, env: dict, tangent_vars: set, token) -> None:
    """Replaces in ``env`` the per-example primal values that the linear map's equations read
    (not the parameters, constants or inputs, already stored), where they are cheap to store,
    by their :func:`materialised` copies."""
    jaxpr = analysis.traced.jaxpr.jaxpr
    skip = set(analysis.traced.param_vars) | set(jaxpr.constvars) | set(analysis.traced.input_vars)
    read = {}  # ordered, without repeats
    for k in sorted(analysis.tangent):
        for v in jaxpr.eqns[k].invars:
            if (not isinstance(v, Literal) and v not in tangent_vars and v not in skip
                    and jnp.ndim(env[v]) > 0 and _cheap_to_store(env[v])):
                read[v] = None
    if read:
        env.update(zip(read, materialised([env[v] for v in read], token)))


def evaluate_side(analysis: Analysis, params: list, inputs: list, strict: bool):
    """Factors and cotangents of every use on one side.

    Returns:
      ``(arrays, specs)``: ``arrays = (factors, cotangents)`` with ``factors[u][v]`` the factor
      arrays of output ``v`` of use ``u`` and ``cotangents[k][u][v]`` of shape
      ``(*out_leaf_k.shape, *y_v.shape)``; ``specs[u][v]`` the static form specs.
    """
    traced = analysis.traced
    jaxpr = traced.jaxpr.jaxpr
    env = dict(zip(jaxpr.constvars, traced.jaxpr.consts))
    env.update(zip(traced.param_vars, params))
    env.update(zip(traced.input_vars, inputs))
    tangent_vars = set(traced.tangent_vars)
    for k, eqn in enumerate(jaxpr.eqns):
        if k in analysis.tangent:
            tangent_vars.update(eqn.outvars)
        else:
            env.update(zip(eqn.outvars, bind(eqn, [read(env, v) for v in eqn.invars])))

    tokens = [p for p in params if jnp.size(p) and jnp.issubdtype(jnp.result_type(p), jnp.floating)]
    if tokens:
        _read_once(analysis, env, tangent_vars, tokens[0])
    forms = [_forms(analysis, u, env, tangent_vars, strict) for u in analysis.uses]
    output_uses = {u.operand: i for i, u in enumerate(analysis.uses) if u.eqn_index is None}

    def downstream(ys):
        """The linear map from use outputs to f's outputs (everything after the uses)."""
        tenv = {}

        def arg(v, zero_chains):
            if isinstance(v, Literal) or v not in tangent_vars:
                return read(env, v)
            if v in analysis.chains:
                return jnp.zeros(v.aval.shape, v.aval.dtype) if zero_chains else None
            return tenv[v]

        for k in sorted(analysis.tangent):
            if k in analysis.chain_eqns:
                continue
            eqn = jaxpr.eqns[k]
            if k in analysis.uses_by_eqn:
                others = any(
                    not isinstance(v, Literal) and v in tangent_vars and v not in analysis.chains
                    for v in eqn.invars
                )
                outs = apply_linear(eqn, [arg(v, True) for v in eqn.invars]) if others else None
                for ui in analysis.uses_by_eqn[k]:
                    outs = ys[ui] if outs is None else [a + b for a, b in zip(outs, ys[ui])]
            else:
                outs = apply_linear(eqn, [arg(v, False) for v in eqn.invars])
            tenv.update(zip(eqn.outvars, outs))
        result = []
        for i, v in enumerate(jaxpr.outvars):
            if i in output_uses:
                result.append(ys[output_uses[i]][0])
            elif not isinstance(v, Literal) and v in tenv:
                result.append(tenv[v])
            else:  # does not depend on the parameters
                result.append(jnp.zeros(v.aval.shape, v.aval.dtype))
        return result

    ys0 = [
        [jnp.zeros(v.aval.shape, v.aval.dtype) for v in use_outvars(analysis, u)]
        for u in analysis.uses
    ]
    # The transpose of the linear map, not jax.vjp: no forward mode through it, so a custom_vjp
    # region (a ``custom_lin`` equation) is pulled back by the user's bwd. Integer use outputs
    # (a loop counter) are not linear inputs: held at zero, their cotangents float0 zeros.
    is_float = [[jnp.issubdtype(y.dtype, jnp.inexact) for y in ys] for ys in ys0]
    transposed = jax.linear_transpose(
        lambda fys: downstream(_merge(fys, ys0, is_float)), _pick(ys0, is_float))

    def pullback(cts):
        (fcts,) = transposed(cts)
        return (_merge(fcts, [[np.zeros(y.shape, jax.dtypes.float0) for y in ys] for ys in ys0],
                       is_float),)
    out_avals = [v.aval for v in jaxpr.outvars]
    cotangents = []
    for k, aval in enumerate(out_avals):
        size = math.prod(aval.shape)

        def cot(e, k=k):
            cts = [jnp.zeros(a.shape, a.dtype) for a in out_avals]
            cts[k] = e.reshape(aval.shape).astype(aval.dtype)
            return pullback(cts)[0]

        cts = jax.vmap(cot)(jnp.eye(size, dtype=aval.dtype))
        cotangents.append(
            jax.tree.map(lambda c, shape=tuple(aval.shape): c.reshape(shape + c.shape[1:]), cts)
        )
    factors = [[f.arrays for f in fs] for fs in forms]
    specs = [[f.spec for f in fs] for fs in forms]
    return (factors, cotangents), specs
