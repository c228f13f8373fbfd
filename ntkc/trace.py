"""The user's function lowered to a jaxpr that is linear in the parameter tangents.

``jax.linearize`` splits the primal computation (activations, masks: residuals) from the linear
map; tracing it inside ``make_jaxpr`` keeps both in one jaxpr whose inputs are
``(params, tangents, inputs)``, so residuals are recomputed from the inputs wherever the jaxpr is
evaluated (under ``vmap``, per example).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from ntkc._compat import ClosedJaxpr, Literal


@dataclasses.dataclass(frozen=True)
class Traced:
    """A linearized function.

    Attributes:
      jaxpr: ClosedJaxpr of ``(*param_leaves, *tangent_leaves, *input_leaves) -> out tangents``.
      n_params: number of parameter leaves (and tangent leaves).
      n_inputs: number of input leaves.
    """

    jaxpr: ClosedJaxpr
    n_params: int
    n_inputs: int

    @property
    def param_vars(self):
        return self.jaxpr.jaxpr.invars[: self.n_params]

    @property
    def tangent_vars(self):
        return self.jaxpr.jaxpr.invars[self.n_params : 2 * self.n_params]

    @property
    def input_vars(self):
        return self.jaxpr.jaxpr.invars[2 * self.n_params :]


def trace_linear(fn: Callable, params, inputs: list) -> Traced:
    """Traces ``fn(params, inputs) -> list of output leaves`` linearized in ``params``.

    Args:
      fn: the function; ``inputs`` is a flat list of arrays (data and keyword arguments).
      params: parameter pytree (arrays or ShapeDtypeStructs).
      inputs: flat list of input arrays (or ShapeDtypeStructs).
    """
    p_leaves, p_def = jax.tree.flatten(params)
    n = len(p_leaves)

    def linear(*args):
        prm = jax.tree.unflatten(p_def, args[:n])
        tan = jax.tree.unflatten(p_def, args[n : 2 * n])
        ins = list(args[2 * n :])
        _, lin = jax.linearize(lambda p: fn(p, ins), prm)
        return lin(tan)

    shapes = [jax.ShapeDtypeStruct(jax.numpy.shape(a), a.dtype) for a in [*p_leaves, *p_leaves, *inputs]]
    closed = jax.make_jaxpr(linear)(*shapes)
    return Traced(closed, n, len(inputs))


def check_real_tangents(traced: Traced) -> None:
    """Structured derivatives contract cotangents and factors as real bilinear forms; a complex
    value in the linear map (a real parameter through ``x @ (a + 1j * b)``, then ``.real``) would
    need the real part of each product. Until that is done, refuse instead of a wrong kernel."""
    tangent = set(traced.tangent_vars)
    for eqn in traced.jaxpr.jaxpr.eqns:
        if not any(v in tangent for v in eqn.invars if not isinstance(v, Literal)):
            continue
        tangent.update(eqn.outvars)
        for v in eqn.outvars:
            if jax.numpy.issubdtype(v.aval.dtype, jax.numpy.complexfloating):
                raise NotImplementedError(
                    f"method='structured': the linear map of f has a complex value "
                    f"({eqn.primitive.name} -> {v.aval.str_short()}); structured derivatives "
                    "support real values only. Use method='jacobian' or 'ntvp' (method='auto' "
                    "picks one of them)")
