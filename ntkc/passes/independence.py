"""Do examples interact? The check of ``vmap_axes``' certificate on the jaxpr of ``f``.

``vmap_axes`` tells ntkc that examples do not interact, so that it may differentiate ``f`` one
example at a time. A function that breaks that promise (``x - x.mean(0)``, batch norm over the
batch, a softmax across the batch) would silently get a wrong kernel. This pass follows the
example axis through the jaxpr of ``f`` over the whole batch, equation by equation, with the table
in ``ntkc.rules.example_axes``, into scans, loops, conditionals and calls, and raises a clear
error when an output depends on other examples. It runs once per input signature, on the jaxpr
the argument checks traced anyway.

Where the table loses track (a primitive it does not know, an unusual reshape), it asks the
function itself, when the inputs are concrete: a JVP whose input tangent is non-zero on one
example only must leave the other examples' outputs exactly zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc import _compat
from ntkc.rules.example_axes import Axis, Coupled, Unknown, lookup

_MAX_LOOP_PASSES = 4  # a loop's carry states reach their fixed point in 1-2 passes


def _worst(a, b):
    """Two states of one value on different paths (loop iterations, branches) merged."""
    for kind in (Coupled, Unknown):
        for s in (a, b):
            if isinstance(s, kind):
                return s
    if a is None or b is None or a == b:
        return b if a is None else a
    return Coupled("moves the example axis between loop iterations or branches")


def _located(states, eqn):
    """Outputs of a rule, with the equation recorded where a state names none yet."""
    return [dataclasses.replace(s, eqn=eqn) if isinstance(s, (Coupled, Unknown)) and s.eqn is None
            else s for s in states]


def example_states(jaxpr, in_states) -> list:
    """The state (see ``ntkc.rules.example_axes``) of each output of ``jaxpr``."""
    env = {v: None for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_states))
    read = lambda v: None if isinstance(v, _compat.Literal) else env[v]
    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn, ins) -> list:
    n = len(eqn.outvars)
    sub = _compat.inlinable_jaxpr(eqn)
    if sub is not None:  # the call's line locates what happens inside library code
        return [dataclasses.replace(s, site=eqn)
                if isinstance(s, (Coupled, Unknown)) and s.site is None else s
                for s in example_states(sub[0], ins)]
    control = _CONTROL_FLOW.get(eqn.primitive)
    if control is not None:
        return _located(control(eqn, ins), eqn)
    for kind in (Coupled, Unknown):  # the worst operand decides for a plain primitive
        bad = next((s for s in ins if isinstance(s, kind)), None)
        if bad is not None:
            return [bad] * n
    if all(s is None for s in ins):
        return [None] * n
    rule = lookup(eqn.primitive)
    if rule is None:
        return [Unknown(f"{eqn.primitive.name} is not in ntkc's table of example axes", eqn)] * n
    return _located(rule(eqn, ins), eqn)


def _scan(eqn, ins):
    body = eqn.params["jaxpr"].jaxpr
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
    xs = [Axis(s.axis - 1, s.inner) if isinstance(s, Axis) and s.axis > 0
          else Unknown("scans over the example axis") if isinstance(s, Axis) else s for s in xs]
    carry, ys = _fixed_point(lambda c: _split(example_states(body, consts + c + xs), n_carry),
                             carry)
    ys = [Axis(s.axis + 1, s.inner) if isinstance(s, Axis) else s for s in ys]
    return carry + ys


def _split(outs, n):
    return outs[:n], outs[n:]


def _fixed_point(step, carry):
    """Iterates ``step(carry) -> (carry, rest)`` until the carry's states stop changing."""
    for _ in range(_MAX_LOOP_PASSES):
        new, rest = step(carry)
        merged = [_worst(c, o) for c, o in zip(carry, new)]
        if merged == carry:
            return merged, rest
        carry = merged
    return [s if s is None else Unknown("a loop carry whose example axis does not settle")
            for s in carry], rest


def _while(eqn, ins):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = ins[:nc], ins[nc:nc + nb], ins[nc + nb:]
    carry, _ = _fixed_point(
        lambda c: (example_states(p["body_jaxpr"].jaxpr, body_consts + c), []), carry)
    stop, = example_states(p["cond_jaxpr"].jaxpr, cond_consts + carry)
    if stop is not None:  # the number of iterations depends on the examples
        worst = stop if isinstance(stop, (Coupled, Unknown)) else Coupled("")
        return [dataclasses.replace(worst, why="a while loop whose stopping condition depends "
                                    "on the examples")] * len(carry)
    return carry


def _cond(eqn, ins):
    index, ops = ins[0], ins[1:]
    if index is not None:
        why = "a conditional whose branch depends on the examples"
        kind = Unknown if isinstance(index, Unknown) else Coupled
        return [kind(why)] * len(eqn.outvars)
    outs = None
    for branch in eqn.params["branches"]:
        states = example_states(branch.jaxpr, ops)
        outs = states if outs is None else [_worst(a, b) for a, b in zip(outs, states)]
    return outs


_CONTROL_FLOW = {lax.scan_p: _scan, lax.while_p: _while, lax.cond_p: _cond}


# --------------------------------------------------------------------------- the check


def _where(state) -> str:
    eqn = state.eqn
    if eqn is None:
        return ""
    line = _compat.source_line(eqn) or (state.site and _compat.source_line(state.site))
    return f" at `{eqn.primitive.name}`" + (f" ({line})" if line else "")


def check_independent(jaxpr, in_states, out_axes, probe=None) -> None:
    """Raises ``ValueError`` when an output of ``jaxpr`` (f over the whole batch) mixes examples.

    Args:
      jaxpr: the closed jaxpr of f, with the inputs' leaves as its invars.
      in_states: per invar, ``Axis(batch axis)`` or None.
      out_axes: per output, its batch axis.
      probe: ``() -> bool`` (True: examples interact), asked when the table cannot tell; None
        when the inputs are abstract (then an unknown layout passes).
    """
    outs = example_states(jaxpr.jaxpr, in_states)
    unknown = None
    for k, (state, axis) in enumerate(zip(outs, out_axes)):
        if state is None or state == Axis(axis):
            continue
        if isinstance(state, Unknown):
            unknown = unknown or state
            continue
        if isinstance(state, Axis):
            state = Coupled(f"its examples lie along axis {state.axis} (in blocks of "
                            f"{state.inner}), not along out_axes' axis {axis}")
        raise ValueError(_message(k, axis, state.why + _where(state)))
    if unknown is not None and probe is not None and probe():
        raise ValueError(_message(
            None, None, "perturbing one example changes the outputs of others (ntkc's table "
            f"of example axes lost track{_where(unknown)}: {unknown.why})"))


def _message(k, axis, why) -> str:
    output = "" if k is None else f" output {k} (batch axis {axis})"
    return (f"vmap_axes: examples interact in f:{output} depends on other examples: {why}. "
            "vmap_axes certifies that examples do not interact (f(x)[i] depends on x[i] only), "
            "and the kernel would be silently wrong; pass vmap_axes=None to compute it for the "
            "whole batch as one example")


def perturbation_probe(fn, batched, axes, out_axes):
    """``() -> bool``: whether a tangent on example 0 of ``batched`` (the batched input leaves,
    ``fn(batched) -> output leaves``) reaches another example's outputs."""

    def probe():
        floats = [jnp.issubdtype(jnp.result_type(b), jnp.inexact) for b in batched]
        if not any(floats):
            return False  # integer inputs (tokens) have no tangents: cannot tell, let it pass
        key = jax.random.PRNGKey(0)
        tangents = []
        for b, ax, fl in zip(batched, axes, floats):
            if not fl:
                tangents.append(np.zeros(np.shape(b), jax.dtypes.float0))
                continue
            t = jax.random.normal(key, np.shape(b), jnp.result_type(b))
            mask = (jnp.arange(np.shape(b)[ax]) == 0).reshape(
                [-1 if d == ax else 1 for d in range(np.ndim(b))])
            tangents.append(jnp.where(mask, t, 0).astype(jnp.result_type(b)))
        _, outs = jax.jvp(fn, (list(batched),), (tangents,))
        for t, ax in zip(outs, out_axes):
            rest = jnp.moveaxis(t, ax, 0)[1:]
            if rest.size and bool(jnp.any(rest != 0)):
                return True
        return False

    return probe
