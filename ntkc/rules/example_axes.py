"""How each primitive carries the example axis: the table behind the ``vmap_axes`` check.

``vmap_axes`` certifies that examples do not interact. ``ntkc.passes.independence`` checks that
claim on the jaxpr of ``f`` over the whole batch by following, value by value, where the example
axis is. A value's *state* is one of:

* ``None``: it does not depend on the examples (parameters, constants);
* ``Axis(axis, inner)``: element ``k`` along ``axis`` belongs to example ``k // inner``, and
  depends on that example alone (``inner > 1`` after a reshape merged the example axis with the
  axes after it, as ``(N, T, D) -> (N*T, D)`` does);
* ``Coupled(why)``: it mixes examples (a sum over the example axis, a matmul of two batched
  operands, a shift along the examples, ...);
* ``Unknown(why)``: this table cannot tell (a primitive without an entry, a layout it does not
  follow).

A rule gets the equation and its operands' states, only ``None`` or ``Axis`` (the pass handles
``Coupled`` and ``Unknown`` operands itself), and returns one state per output. It is keyed by
the primitive object, like every rule table in ntkc.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from jax import lax

from ntkc._compat import add_any_p


@dataclasses.dataclass(frozen=True)
class Axis:
    """Element ``k`` along ``axis`` belongs to example ``k // inner`` (and depends on it alone)."""

    axis: int
    inner: int = 1


@dataclasses.dataclass(frozen=True)
class Coupled:
    """The value mixes examples; ``eqn`` is the equation where they first met."""

    why: str
    eqn: Any = dataclasses.field(default=None, compare=False)
    site: Any = dataclasses.field(default=None, compare=False)  # the call around ``eqn``


@dataclasses.dataclass(frozen=True)
class Unknown:
    """The table cannot tell whether the value mixes examples; ``eqn`` is where it lost track."""

    why: str
    eqn: Any = dataclasses.field(default=None, compare=False)
    site: Any = dataclasses.field(default=None, compare=False)


_RULES: dict[Any, Callable] = {}


def register(*primitives):
    """Decorator: ``fn(eqn, states) -> list of output states`` for each of ``primitives``."""

    def decorate(fn):
        for p in primitives:
            if p is not None:
                _RULES[p] = fn
        return fn

    return decorate


def lookup(primitive) -> Callable | None:
    return _RULES.get(primitive)


def _prims(*names):
    return [getattr(lax, n + "_p", None) for n in names]


def _shape(v):
    return tuple(v.aval.shape)


def _batched(eqn, states):
    """``(operand, state)`` of the operands that carry the example axis."""
    return [(v, s) for v, s in zip(eqn.invars, states) if isinstance(s, Axis)]


def _join(states) -> Any:
    """One state for values that must agree: the common axis, or Coupled when they differ."""
    axes = {s for s in states if s is not None}
    if len(axes) > 1:
        return Coupled("combines operands whose examples lie along different axes")
    return axes.pop() if axes else None


# ---------------------------------------------------------------------------- elementwise

_ELEMENTWISE = _prims(
    "abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh",
    "bessel_i0e", "bessel_i1e", "cbrt", "ceil", "clamp", "clz", "complex", "conj",
    "convert_element_type", "copy", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv",
    "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "igammac", "imag",
    "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min",
    "mul", "ne", "neg", "nextafter", "not", "or", "polygamma", "population_count", "pow",
    "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "shift_left",
    "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square",
    "stop_gradient", "sub", "tan", "tanh", "xor", "zeta", "optimization_barrier",
    "sharding_constraint", "regularized_incomplete_beta", "bitcast_convert_type",
) + [add_any_p]


@register(*_ELEMENTWISE)
def _elementwise(eqn, states):
    """Each output element depends on the same element of each operand (rank-0 operands and
    size-1 axes broadcast)."""
    outs = []
    for out in eqn.outvars:
        shape = _shape(out)
        axes = []
        for v, s in _batched(eqn, states):
            if len(_shape(v)) != len(shape) or _shape(v)[s.axis] != shape[s.axis]:
                return [Unknown("broadcasts a batched operand")] * len(eqn.outvars)
            axes.append(s)
        outs.append(_join(axes))
    if eqn.primitive is getattr(lax, "optimization_barrier_p", None):  # one output per operand
        return list(states)
    return outs


# ----------------------------------------------------------------------------- layout


@register(lax.broadcast_in_dim_p)
def _broadcast_in_dim(eqn, states):
    broadcast_dimensions = eqn.params["broadcast_dimensions"]
    v, s = eqn.invars[0], states[0]
    if s is None:  # a batched shape operand (dynamic shapes): not followed
        return [Unknown("broadcasts to a shape that depends on the examples")]
    target = broadcast_dimensions[s.axis]
    if _shape(eqn.outvars[0])[target] != _shape(v)[s.axis]:
        return [Unknown("broadcasts the example axis")]
    return [Axis(target, s.inner)]


@register(lax.transpose_p)
def _transpose(eqn, states):
    s = states[0]
    return [Axis(list(eqn.params["permutation"]).index(s.axis), s.inner)]


@register(lax.reshape_p)
def _reshape(eqn, states):
    """Follows the example axis through a reshape when it stays a block of its own: the axes
    before it keep their product, and it is split from or merged with the axes after it."""
    s = states[0]
    old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if eqn.params.get("dimensions") is not None:
        return [Unknown("reshapes with a transpose")]
    n = old[s.axis] // s.inner  # number of examples
    stride = s.inner * math.prod(old[s.axis + 1:])  # elements per example, in the flat order
    outer = math.prod(old[:s.axis])
    for a in range(len(new)):
        after = math.prod(new[a + 1:])
        if (math.prod(new[:a]) == outer and new[a] * after == n * stride
                and stride % after == 0 and new[a] == n * (stride // after)):
            return [Axis(a, stride // after)]
    return [Unknown("reshapes the example axis into a layout this check does not follow")]


@register(lax.squeeze_p)
def _squeeze(eqn, states):
    s = states[0]
    dims = [d % len(_shape(eqn.invars[0])) for d in eqn.params["dimensions"]]
    if s.axis in dims:
        return [Unknown("squeezes the example axis")]
    return [Axis(s.axis - sum(d < s.axis for d in dims), s.inner)]


def _keeps_examples(eqn, states, along):
    """The states of an op that changes nothing but the axes in ``along`` (cumulative, sorted,
    reversed, windowed or sliced): coupled when one of them is the example axis."""
    out = _join([s for s in states if isinstance(s, Axis)])
    if isinstance(out, Axis) and out.axis in along:
        return [Coupled(f"works along the example axis {out.axis}")] * len(eqn.outvars)
    return [out] * len(eqn.outvars)


@register(*_prims("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"))
def _cumulative(eqn, states):
    return _keeps_examples(eqn, states, {eqn.params["axis"]})


@register(lax.rev_p)
def _rev(eqn, states):
    return _keeps_examples(eqn, states, set(eqn.params["dimensions"]))


@register(lax.sort_p)
def _sort(eqn, states):
    return _keeps_examples(eqn, states, {eqn.params["dimension"]})


@register(lax.top_k_p)
def _top_k(eqn, states):
    return _keeps_examples(eqn, states, {len(_shape(eqn.invars[0])) - 1})


def _changed_axes(old, new, keep=()):
    return {a for a, (m, n) in enumerate(zip(old, new)) if m != n} - set(keep)


@register(lax.slice_p)
def _slice(eqn, states):
    old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    strides = eqn.params.get("strides") or (1,) * len(old)
    changed = _changed_axes(old, new) | {a for a, k in enumerate(strides) if k != 1}
    return _keeps_examples(eqn, states, changed)


@register(lax.pad_p)
def _pad(eqn, states):
    if isinstance(states[1], Axis):
        return [Coupled("pads with a value that depends on the examples")]
    padded = {a for a, cfg in enumerate(eqn.params["padding_config"]) if tuple(cfg) != (0, 0, 0)}
    return _keeps_examples(eqn, states[:1], padded)


@register(lax.dynamic_slice_p)
def _dynamic_slice(eqn, states):
    if any(s is not None for s in states[1:]):
        return [Unknown("slices at positions that depend on the examples")]
    return _keeps_examples(eqn, states[:1], _changed_axes(_shape(eqn.invars[0]),
                                                           _shape(eqn.outvars[0])))


@register(lax.dynamic_update_slice_p)
def _dynamic_update_slice(eqn, states):
    if any(s is not None for s in states[2:]):
        return [Unknown("updates at positions that depend on the examples")]
    return _keeps_examples(eqn, states[:2], _changed_axes(_shape(eqn.invars[0]),
                                                           _shape(eqn.invars[1])))


@register(lax.concatenate_p)
def _concatenate(eqn, states):
    return _keeps_examples(eqn, states, {eqn.params["dimension"]})


@register(getattr(lax, "stack_p", None))
def _stack(eqn, states):
    """Operands of one shape stacked along a new axis ``axis``."""
    out = _join([s for s in states if isinstance(s, Axis)])
    if not isinstance(out, Axis):
        return [out]
    return [Axis(out.axis + (out.axis >= eqn.params["axis"]), out.inner)]


@register(getattr(lax, "unstack_p", None))
def _unstack(eqn, states):
    s, axis = states[0], eqn.params["axis"]
    if s.axis == axis:
        return [Coupled(f"works along the example axis {axis}")] * len(eqn.outvars)
    return [Axis(s.axis - (s.axis > axis), s.inner)] * len(eqn.outvars)


@register(lax.split_p)
def _split(eqn, states):
    return _keeps_examples(eqn, states, {eqn.params["axis"]})


@register(*_prims("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"))
def _reduce_window(eqn, states):
    windowed = {a for a, (w, st) in enumerate(zip(eqn.params["window_dimensions"],
                                                  eqn.params["window_strides"]))
                if w != 1 or st != 1}
    windowed |= {a for a, p in enumerate(eqn.params.get("padding", ())) if tuple(p) != (0, 0)}
    return _keeps_examples(eqn, states, windowed)


@register(lax.select_and_scatter_add_p)
def _select_and_scatter_add(eqn, states):
    return _reduce_window(eqn, states)


# ----------------------------------------------------------------------------- reductions


@register(*_prims("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                  "reduce_or", "reduce_xor", "argmax", "argmin", "reduce"))
def _reduce(eqn, states):
    s = _join([s for s in states if isinstance(s, Axis)])
    if not isinstance(s, Axis):
        return [s] * len(eqn.outvars)
    axes = set(eqn.params["axes"])
    if s.axis in axes:
        return [Coupled(f"reduces over the example axis {s.axis}")] * len(eqn.outvars)
    return [Axis(s.axis - sum(a < s.axis for a in axes), s.inner)] * len(eqn.outvars)


# ------------------------------------------------------------------------ contractions


@register(lax.dot_general_p)
def _dot_general(eqn, states):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = states
    lshape, rshape = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    if isinstance(ls, Axis) and ls.axis in lc or isinstance(rs, Axis) and rs.axis in rc:
        return [Coupled("contracts over the example axis")]
    lfree = [a for a in range(len(lshape)) if a not in lc and a not in lb]
    rfree = [a for a in range(len(rshape)) if a not in rc and a not in rb]
    if isinstance(ls, Axis) and isinstance(rs, Axis):
        if ls.axis in lb and rs.axis in rb and lb.index(ls.axis) == rb.index(rs.axis) \
                and ls.inner == rs.inner:
            return [Axis(lb.index(ls.axis), ls.inner)]
        return [Coupled("multiplies two batched operands across examples")]
    if isinstance(ls, Axis):
        if ls.axis in lb:
            return [Axis(lb.index(ls.axis), ls.inner)]
        return [Axis(len(lb) + lfree.index(ls.axis), ls.inner)]
    if rs.axis in rb:
        return [Axis(rb.index(rs.axis), rs.inner)]
    return [Axis(len(lb) + len(lfree) + rfree.index(rs.axis), rs.inner)]


@register(lax.conv_general_dilated_p)
def _conv(eqn, states):
    ls, rs = states
    dn = eqn.params["dimension_numbers"]
    if rs is not None:
        return [Coupled("convolves with a kernel that depends on the examples")]
    if ls.axis != dn.lhs_spec[0] or eqn.params.get("batch_group_count", 1) != 1:
        return [Coupled(f"convolves along the example axis {ls.axis}")]
    return [Axis(dn.out_spec[0], ls.inner)]


@register(lax.gather_p)
def _gather(eqn, states):
    """Embedding lookups (batched indices into an unbatched table) and lookups along other axes
    of a batched operand (whole example axis kept in the slice)."""
    os_, is_ = states
    dn = eqn.params["dimension_numbers"]
    out_rank = len(_shape(eqn.outvars[0]))
    if getattr(dn, "operand_batching_dims", ()):
        return [Unknown("gathers with batching dimensions")]
    if os_ is None:  # an embedding: output batch dimensions follow the indices' dimensions
        if is_.axis == len(_shape(eqn.invars[1])) - 1:
            return [Unknown("gathers with indices whose index vector holds the examples")]
        batch_dims = [d for d in range(out_rank) if d not in dn.offset_dims]
        return [Axis(batch_dims[is_.axis], is_.inner)]
    if is_ is not None:
        return [Unknown("gathers from a batched operand at batched indices")]
    slice_sizes = eqn.params["slice_sizes"]
    if (os_.axis in dn.start_index_map or os_.axis in dn.collapsed_slice_dims
            or slice_sizes[os_.axis] != _shape(eqn.invars[0])[os_.axis]):
        return [Coupled("gathers along the example axis")]
    kept = [a for a in range(len(slice_sizes)) if a not in dn.collapsed_slice_dims]
    return [Axis(dn.offset_dims[kept.index(os_.axis)], os_.inner)]


@register(lax.iota_p)
def _constant(eqn, states):
    return [None] * len(eqn.outvars)
