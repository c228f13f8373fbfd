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
import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ntkc._compat import ClosedJaxpr, Jaxpr, bind, reverse_only
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


_RULE_KEYWORDS = ("operands", "index", "outs", "shapes")


def register_rule(primitive, structure: str = ""):
    """Decorator registering a structured-derivative rule for ``primitive``: the public
    :func:`register`, for your own primitives or to override a built-in rule.

    The structured method (``ntkc.ntk_fn(..., method="structured")``) looks at every equation of
    ``f``'s linearized jaxpr that consumes a parameter value ``p`` and asks the rule of its
    primitive for ``∂y/∂p`` in a compact form. A rule is a function of keyword arguments only::

        @ntkc.register_rule(my_p, "diagonal: the scale s")
        def _(*, operands, index, outs, shapes, **params):
            ...

    It receives:

    * ``operands``: the equation's operands, in order. Those that are tangents (``p`` itself,
      at ``index``, and any other operand that depends on the parameters) are ``None``; the
      others are arrays (under ``jax.jit`` and ``jax.vmap``: tracers, so use ``jnp`` and never
      branch on their values) or Python scalars for literals.
    * ``index``: which operand is ``p``.
    * ``outs``: the abstract values of the equation's outputs (``.shape``, ``.dtype``), one per
      output, also for a primitive with a single result.
    * ``shapes``: the shapes of all operands, as tuples (``shapes[index]`` is ``p``'s shape);
      known also for the ``None`` operands.
    * the equation's parameters (``eqn.params``) as keywords. Take the ones you need by name and
      absorb the rest with ``**_``, so that a parameter added by a later JAX release does not
      break the rule.

    It returns a list with one :class:`ntkc.Form` per output of the equation (a list of one for
    a single-result primitive), describing ``y_k = Σ Π factors · p`` with the other tangent
    operands taken as zero: ``out_labels`` has one label per axis of ``y_k``, ``param_labels``
    one per axis of ``p``, each factor is ``(array, labels)`` with one label per array axis (or
    ``(int_ids, ntkc.OneHot(labels, size))`` for a one-hot factor), and ``structure`` is a short
    summary shown in plans. A label on ``y`` and ``p`` is an identity (diagonal), a label on
    ``y`` and a factor only is dense, a label on ``y`` only is a broadcast, a label on ``p``
    only is summed over. Or the rule returns ``None`` to decline (for these operands or
    parameters it has no structured form): the equation then uses the dense Jacobian fallback
    (a warning, or :class:`ntkc.UnsupportedPrimitiveError` under ``strict=True``).

    Check a rule with :func:`ntkc.testing.check_rule` before using it: it compares the forms
    with ``jax.jacfwd`` and ``jax.jacrev`` of the primitive and checks every label.

    Registering replaces any earlier rule of ``primitive`` (a built-in one too); the previous
    :class:`Rule` is in ``ntkc.rules.registered()`` if you want to restore it. Register rules
    before building kernel functions: a kernel function that already ran keeps its compiled
    program.

    Args:
      primitive: the primitive object (a ``jax.extend.core.Primitive``, such as
        ``jax.lax.mul_p`` or your own).
      structure: what the rule claims about ``∂y/∂p`` in a few words, shown in docs and plans.

    Returns:
      A decorator that registers the rule and returns it unchanged.

    Raises:
      TypeError: ``primitive`` is not a primitive, ``structure`` is not a string, or the rule
        cannot take the keywords above.

    Example: ``y[..., i, j] = s[..., i] * p[i, j]`` (a primitive ``rowscale_p`` of your own; the
    whole example, with the primitive's definition, is in ``docs/extending.md``)::

        @ntkc.register_rule(rowscale_p, "diagonal in p, dense factor s")
        def _rowscale(*, operands, index, outs, shapes, **_):
            if index != 1 or operands[0] is None:
                return None  # s as the parameter: no structured form here, use the dense rule
            s = operands[0]
            lead = tuple(("s", a) for a in range(len(shapes[0]) - 1))
            return [ntkc.Form(out_labels=lead + ("i", "j"), param_labels=("i", "j"),
                              factors=((s, lead + ("i",)),), structure="row scale")]

        ntkc.testing.check_rule(rowscale_p, s, p, index=1)
    """
    if not (hasattr(primitive, "bind") and isinstance(getattr(primitive, "name", None), str)):
        raise TypeError(f"register_rule: expected a primitive (jax.extend.core.Primitive), "
                        f"got {primitive!r}")
    if not isinstance(structure, str):
        raise TypeError(f"register_rule: structure must be a string, got {structure!r}")

    def decorate(fn):
        if not callable(fn):
            raise TypeError(f"register_rule({primitive.name}): the rule must be callable, got {fn!r}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without a signature: trust it
            signature = None
        if signature is not None:
            kinds = {p.kind for p in signature.parameters.values()}
            names = {n for n, p in signature.parameters.items()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            missing = [k for k in _RULE_KEYWORDS
                       if k not in names and inspect.Parameter.VAR_KEYWORD not in kinds]
            if missing:
                raise TypeError(
                    f"register_rule({primitive.name}): the rule {fn.__name__!r} must accept the "
                    f"keyword arguments {', '.join(_RULE_KEYWORDS)} and the equation's parameters "
                    f"(absorb them with **_); it lacks {', '.join(missing)}")
        return register(primitive, structure)(fn)

    return decorate


def lookup(primitive) -> Rule | None:
    return _RULES.get(primitive)


# Facts about primitives that passes need besides their structured rule, registered next to it
# (one table each, keyed by the primitive object): FLOP counts and bijections ("chains").
_FLOPS: dict[Any, Callable] = {}
_CHAINS: set = set()


def register_flops(*primitives):
    """Decorator: ``fn(eqn) -> FLOPs`` of an equation of these primitives (the default, one per
    output element, is ``ntkc.passes.cost.eqn_flops``'s)."""

    def decorate(fn):
        for p in primitives:
            _FLOPS[p] = fn
        return fn

    return decorate


def flops_rule(primitive) -> Callable | None:
    return _FLOPS.get(primitive)


_PER_EXAMPLE_GRADIENT_FACTOR: dict[Any, float] = {}


def register_per_example_gradient_factor(primitive, factor: float) -> None:
    """Per-example parameter gradients of ``primitive`` by ``vmap`` of reverse mode (the
    jacobian method's) run ``factor`` times slower than the same FLOPs as matmuls (measured)."""
    _PER_EXAMPLE_GRADIENT_FACTOR[primitive] = float(factor)


def per_example_gradient_factor(primitive) -> float:
    return _PER_EXAMPLE_GRADIENT_FACTOR.get(primitive, 1.0)


def register_chain(*primitives) -> None:
    """Bijections on the entries of their one operand (``⟨S a, S b⟩ = ⟨a, b⟩``): applied to a
    parameter value alone they are folded into its chain, and the NTK can be contracted on the
    op's output as well as on the leaf."""
    _CHAINS.update(p for p in primitives if p is not None)


def is_chain(primitive) -> bool:
    return primitive in _CHAINS


_SELECTIONS: dict[Any, Callable] = {}


def register_selection(primitive, disjoint: Callable) -> None:
    """A selection of entries (``S Sᵀ = I``, as a static slice): folded into a parameter's chain
    like a bijection, since two uses through the same selection may be contracted on the
    selected entries; ``disjoint(eqn_a, eqn_b)`` says when two selections share no entry, so
    that the term of their uses vanishes."""
    _CHAINS.add(primitive)
    _SELECTIONS[primitive] = disjoint


def selections_disjoint(eqn_a, eqn_b) -> bool:
    """Whether two chain equations select disjoint entries of the same value."""
    disjoint = _SELECTIONS.get(eqn_a.primitive)
    return (disjoint is not None and eqn_a.primitive is eqn_b.primitive
            and bool(disjoint(eqn_a, eqn_b)))


_LINEAR_FORMS: dict[Any, Callable] = {}


def register_linear_form(primitive):
    """Decorator: ``fn(eqn, args) -> outputs or None``, the same linear map as ``eqn`` (its
    tangent operands among ``args``) written so that its transpose, which the cotangent pass
    runs, is faster; None keeps the primitive itself."""

    def decorate(fn):
        if primitive is not None:
            _LINEAR_FORMS[primitive] = fn
        return fn

    return decorate


def apply_linear(eqn, args) -> list:
    """One equation of the linear map, in its registered linear form where there is one."""
    form = _LINEAR_FORMS.get(eqn.primitive)
    outs = None if form is None else form(eqn, args)
    return bind(eqn, args) if outs is None else outs


_CALLS: dict[Any, Callable] = {}


def register_call(primitive, get_jaxpr: Callable) -> None:
    """Declares ``primitive`` call-like: ntkc inlines its sub-jaxpr, so that the rules of the
    primitives inside it apply (as for ``jax.jit`` and ``jax.checkpoint`` blocks).

    Without this, the structured method treats an equation of ``primitive`` that consumes a
    parameter as one opaque step: its dense Jacobian (correct, slower; an error under
    ``strict=True``).

    Args:
      primitive: your primitive (a ``jax.extend.core.Primitive``).
      get_jaxpr: ``get_jaxpr(params) -> ClosedJaxpr`` (or ``Jaxpr``), from an equation's
        parameters (``eqn.params``, a dict) the jaxpr that computes exactly the equation's
        outputs from its operands, in order. Inlined in the linearized function, this jaxpr
        must be what the primitive's JVP binds: a JVP that binds ``primitive`` on a JVP jaxpr
        of its sub-jaxpr keeps the call in the linear map, where ntkc inlines it.

    Raises:
      TypeError: ``primitive`` is not a primitive or ``get_jaxpr`` is not callable.
    """
    if not (hasattr(primitive, "bind") and isinstance(getattr(primitive, "name", None), str)):
        raise TypeError(f"register_call: expected a primitive (jax.extend.core.Primitive), "
                        f"got {primitive!r}")
    if not callable(get_jaxpr):
        raise TypeError(f"register_call({primitive.name}): get_jaxpr must be callable "
                        f"(params -> ClosedJaxpr), got {get_jaxpr!r}")
    _CALLS[primitive] = get_jaxpr


def unregister_call(primitive) -> None:
    _CALLS.pop(primitive, None)


def registered_call(eqn):
    """The sub-jaxpr of an equation of a primitive registered with :func:`register_call`, as
    ``(jaxpr, consts)``, or None."""
    get_jaxpr = _CALLS.get(eqn.primitive)
    if get_jaxpr is None:
        return None
    sub = get_jaxpr(dict(eqn.params))
    if isinstance(sub, ClosedJaxpr):
        return sub.jaxpr, sub.consts
    if isinstance(sub, Jaxpr):
        return sub, ()
    raise TypeError(f"register_call({eqn.primitive.name}): get_jaxpr returned {type(sub).__name__}, "
                    "expected a ClosedJaxpr or Jaxpr")


def registered() -> dict:
    """A copy of the rule table."""
    return dict(_RULES)


def unregister(primitive) -> None:
    _RULES.pop(primitive, None)


def dense_forms(eqn, operands, index, p_aval) -> list[Form]:
    """The fallback: ``∂y/∂p`` built densely by forward mode, one factor ``(*y, *p)`` per output
    (by reverse mode, one row per entry of ``y``, for a custom_vjp region: ``custom_lin``).

    Always correct for an equation linear in its tangent operands; costs ``|y|·|p|``.
    """

    def apply(p):
        args = list(operands)
        for i, v in enumerate(eqn.invars):
            if args[i] is None:
                args[i] = jnp.zeros(v.aval.shape, v.aval.dtype)
        args[index] = p
        return apply_linear(eqn, args)  # the same linear map (a wrapper such as guarded's too)

    zero = jnp.zeros(p_aval.shape, p_aval.dtype)
    if not reverse_only(eqn):
        jac = jax.jacfwd(apply)(zero)
    else:  # a custom_vjp region: its Jacobian row by row from the user's bwd (the transpose)
        transposed = jax.linear_transpose(apply, zero)
        jac = []
        for k, v in enumerate(eqn.outvars):
            size, shape = math.prod(v.aval.shape), tuple(v.aval.shape)

            def row(e, k=k, shape=shape):
                cts = [jnp.zeros(w.aval.shape, w.aval.dtype) for w in eqn.outvars]
                cts[k] = e.reshape(shape)
                return transposed(cts)[0]

            rows = jax.vmap(row)(jnp.eye(size, dtype=v.aval.dtype))
            jac.append(rows.reshape(shape + tuple(p_aval.shape)))
    forms = []
    rp = len(p_aval.shape)
    for d in jac:
        ry = d.ndim - rp
        y = tuple(("y", i) for i in range(ry))
        p = tuple(("p", i) for i in range(rp))
        forms.append(Form(y, p, ((d, y + p),), "dense"))
    return forms
