"""The rule table: one frozen :class:`Rule` per primitive object, and the dense fallback.

A rule is called as ``rule(operands=..., index=..., outs=..., **eqn.params)``:

* ``operands``: the equation's operands, with the primal ones as arrays and the tangent ones
  (the parameter value ``p`` at ``index``, and any other tangent) as ``None``;
* ``index``: which operand is ``p``;
* ``outs``: the abstract values (shape, dtype) of the equation's outputs;
* ``shapes``: the shapes of all operands (``shapes[index]`` is the shape of ``p``);
* the equation's parameters as keywords (absorb the ones you do not need with ``**_``).

It returns one :class:`ntkc.ir.Form` per output (``y = Σ Π factors · p``, the other tangent
operands taken as zero), or None when it has no structured form for these parameters, in which
case the dense rule is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ntkc._compat import bind
from ntkc.ir import Form

_RULES: dict[Any, "Rule"] = {}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A structured-derivative rule for one primitive.

    Attributes:
      primitive: the primitive object (``jax.lax.dot_general_p``, ...).
      fn: the rule function (see the module docstring for its contract).
      structure: what it claims about ``∂y/∂p``, for docs and plans.
    """

    primitive: Any
    fn: Callable
    structure: str = ""

    def __call__(self, operands, index, outs, shapes, params) -> list[Form] | None:
        return self.fn(operands=operands, index=index, outs=outs, shapes=shapes, **params)


def register(primitive, structure: str = ""):
    """Decorator registering ``fn`` as the rule of ``primitive`` (replacing any earlier one)."""

    def decorate(fn):
        if primitive is not None:
            _RULES[primitive] = Rule(primitive, fn, structure)
        return fn

    return decorate


def lookup(primitive) -> Rule | None:
    return _RULES.get(primitive)


def registered() -> dict:
    """A copy of the rule table."""
    return dict(_RULES)


def unregister(primitive) -> None:
    _RULES.pop(primitive, None)


def dense_forms(eqn, operands, index, p_aval) -> list[Form]:
    """The fallback: ``∂y/∂p`` built densely by forward mode, one factor ``(*y, *p)`` per output.

    Always correct for an equation linear in its tangent operands; costs ``|y|·|p|``.
    """

    def apply(p):
        args = list(operands)
        for i, v in enumerate(eqn.invars):
            if args[i] is None:
                args[i] = jnp.zeros(v.aval.shape, v.aval.dtype)
        args[index] = p
        return bind(eqn, args)

    jac = jax.jacfwd(apply)(jnp.zeros(p_aval.shape, p_aval.dtype))
    forms = []
    rp = len(p_aval.shape)
    for d in jac:
        ry = d.ndim - rp
        y = tuple(("y", i) for i in range(ry))
        p = tuple(("p", i) for i in range(rp))
        forms.append(Form(y, p, ((d, y + p),), "dense"))
    return forms
