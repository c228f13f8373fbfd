"""Per pair of uses of a parameter leaf, one einsum network (∂f/∂y₁, factors₁, factors₂, ∂f/∂y₂).

Labels are integers: output axes get ``2a`` (x1) and ``2a + 1`` (x2), shared when the axis is
traced or diagonal, so the einsum applies ``trace_axes`` and ``diagonal_axes`` itself; the
parameter axes of the two forms are shared; every other label is private to its side.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from ntkc._axes import KernelAxes
from ntkc._compat import bind
from ntkc.ir import ContractionRecord, OneHot
from ntkc.passes import pairwise
from ntkc.passes.path import PathInfo, optimize
from ntkc.passes.uses import Analysis
from ntkc.rules import selections_disjoint

_SHARED = 1_000_000


@dataclasses.dataclass(frozen=True)
class Contraction:
    """What :func:`contract` does besides the einsum; by default, nothing.

    Attributes:
      records: when a list, every contraction appends its :class:`~ntkc.ir.ContractionRecord`
        (what it contracts and the chosen path) to it: how a schedule is planned.
      planned: when set, an iterator over a schedule's contraction records (``ntkc.ir.Schedule``),
        in the order the program performs them: each einsum takes its order from the next one
        instead of choosing it again.
      hoist: when set (``ntkc.gram``, see :class:`ntkc.passes.hoist.Hoist`), term contractions
        run their path through it, so that steps on one side's operands alone are computed once
        per block of examples.
    """

    records: list | None = None
    planned: Iterator | None = None
    hoist: Callable | None = None


class ScheduleMismatch(AssertionError):
    """The program asked for an einsum its schedule did not plan: a bug in ntkc, never a reason
    to compute a kernel in another order."""


def _planned_path(contraction: Contraction, labels, out, sizes) -> PathInfo:
    record = next(contraction.planned, None)
    if record is None or not record.matches(labels, out, sizes):
        planned = None if record is None else (record.labels, record.output)
        raise ScheduleMismatch(
            f"ntkc: the structured program's einsum {labels} -> {list(out)} is not the next one "
            f"its schedule planned ({planned}); please report this")
    return record.path


def contract(ops, out, memory_limit=None, contraction: Contraction = Contraction(),
             mirror=None, **note) -> jnp.ndarray:
    """``jnp.einsum`` of interleaved operands in the order chosen by ``ntkc.passes.path`` (or
    planned in ``contraction.planned``); ``mirror``: operands that are other operands' arrays
    (``ntkc.passes.path.optimize``).

    ``note`` (what the contraction is, for plans: ``ContractionRecord``'s fields) is recorded
    with the chosen path when ``contraction.records`` is a list.
    """
    labels = [list(l) for l in ops[1::2]]
    sizes = {}
    for arr, ls in zip(ops[0::2], labels):
        sizes.update(zip(ls, arr.shape))
    if contraction.planned is not None:
        info = _planned_path(contraction, labels, out, sizes)
    else:
        itemsize = max(jnp.dtype(a.dtype).itemsize for a in ops[0::2])
        info = optimize(labels, list(out), sizes, itemsize=itemsize, memory_limit=memory_limit,
                        mirror=mirror)
    if contraction.records is not None:
        contraction.records.append(ContractionRecord(
            labels=tuple(map(tuple, labels)), output=tuple(out), sizes=sizes, path=info,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in note.items()}))
    if contraction.hoist is not None and note.get("kind") == "term":
        return contraction.hoist(ops, list(out), list(info.path) or [(0,)], note["sides"])
    if pairwise.has_long_step(info, sizes):
        return pairwise.run_path(ops, list(out), info.path)
    return jnp.einsum(*ops, list(out), optimize=list(info.path) or [(0,)])


@dataclasses.dataclass
class Side:
    """One side's evaluated structured program (arrays may carry a leading example axis)."""

    analysis: Analysis
    factors: list
    cotangents: list
    specs: list
    batched: bool


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _output_labels(axes: KernelAxes, side: int) -> list[int]:
    shared = set(axes.trace) | set(axes.diagonal)
    return [2 * a if (side == 1 or a in shared) else 2 * a + 1 for a in range(axes.ndim)]


class _Labeler:
    """Maps a form's local labels to einsum integers: parameter labels shared, others private."""

    def __init__(self, counter):
        self.counter = counter

    def side(self, spec):
        out_labels, param_labels, _, _ = spec
        table = {l: _SHARED + j for j, l in enumerate(param_labels)}
        return lambda l: table.setdefault(l, next(self.counter))


def _side_operands(side: Side, k, u, v, axes, batch_axis, side_no, lab, indices=None):
    """Interleaved einsum operands of one side: the cotangent and the factors.

    One-hot factors are materialized, unless ``indices`` is a list: then they are appended to it
    as ``(ids, labels, size)`` for the caller to contract against the other side.
    """
    spec = side.specs[u][v]
    out_labels, _, factor_labels, _ = spec
    o = _output_labels(axes, side_no)
    example = [o[batch_axis]] if side.batched else []
    per_example = [o[a] for a in range(axes.ndim) if a != batch_axis] if side.batched else o
    ops = [side.cotangents[k][u][v], example + per_example + [lab(l) for l in out_labels]]
    for arr, labels in zip(side.factors[u][v], factor_labels):
        if isinstance(labels, OneHot):
            mapped = example + [lab(l) for l in labels.labels]
            if indices is not None:
                indices.append((arr, mapped, labels.size))
            else:
                ops += [jax.nn.one_hot(arr, labels.size, dtype=ops[0].dtype), mapped]
        else:
            ops += [arr, example + [lab(l) for l in labels]]
    return ops, example + per_example


def _align(arr, labels, target):
    """``arr`` (axes named by ``labels``) transposed and expanded to broadcast over ``target``."""
    order = sorted(range(len(labels)), key=lambda i: target.index(labels[i]))
    arr = jnp.transpose(arr, order)
    present = set(labels)
    return arr.reshape(tuple(arr.shape[order.index(labels.index(t))] if t in present else 1
                             for t in target))


def _index_operands(idx1, idx2, dtype):
    """Pairs of one-hot factors on the same parameter axis become token-equality matrices
    ``ids1 == ids2``; the rest are materialized as one-hot matrices."""
    ops = []
    for ids1, l1, size in idx1:
        match = next((j for j, (_, l2, _) in enumerate(idx2) if l2[-1] == l1[-1]), None)
        if match is None:
            ops += [jax.nn.one_hot(ids1, size, dtype=dtype), l1]
            continue
        ids2, l2, _ = idx2.pop(match)
        target = list(dict.fromkeys(l1[:-1] + l2[:-1]))
        a, b = _align(ids1, l1[:-1], target), _align(ids2, l2[:-1], target)
        ops += [((a == b) & (a < size)).astype(dtype), target]
    for ids2, l2, size in idx2:
        ops += [jax.nn.one_hot(ids2, size, dtype=dtype), l2]
    return ops


def _present(ops) -> set:
    return {l for labels in ops[1::2] for l in labels}


def _multiplicity(spec, p_shape, present) -> int:
    """Parameter axes that no operand carries (a reduction) count each entry that many times."""
    return math.prod(
        p_shape[j] for j in range(len(p_shape)) if _SHARED + j not in present
    )


def _einsum_to(ops, labels, shapes_by_label, memory_limit, contraction: Contraction):
    """einsum to ``labels``, broadcasting any label that no operand carries."""
    present = _present(ops)
    kept = [l for l in labels if l in present]
    out = contract(ops, kept, memory_limit, contraction, kind="gradient")
    for i, l in enumerate(labels):
        if l not in present:
            out = jnp.expand_dims(out, i)
    return jnp.broadcast_to(out, tuple(shapes_by_label[l] for l in labels))


def _pull_back(g, chain, leaf_aval, n_lead):
    """Transpose of the chain (θ -> p) applied to g (leading axes ``n_lead``): p-space -> θ."""
    if not chain.eqns:
        return g

    def forward(theta):
        x = theta
        for eqn in chain.eqns:
            x = bind(eqn, [x] + [None] * 0)[0]
        return x

    transpose = jax.linear_transpose(forward, jax.ShapeDtypeStruct(leaf_aval.shape, leaf_aval.dtype))
    lead = g.shape[:n_lead]
    flat = g.reshape((-1,) + g.shape[n_lead:])
    back = jax.vmap(lambda x: transpose(x)[0])(flat)
    return back.reshape(lead + back.shape[1:])


def _use_aval(analysis: Analysis, u):
    use = analysis.uses[u]
    jaxpr = analysis.traced.jaxpr.jaxpr
    if use.eqn_index is None:
        return jaxpr.outvars[use.operand].aval
    return jaxpr.eqns[use.eqn_index].invars[use.operand].aval


def output_kernel(k: int, axes: KernelAxes, batch_axis, n_params: int, s1: Side, s2: Side,
                  memory_limit=None, by_param: bool = False,
                  contraction: Contraction = Contraction()):
    """The kernel of output leaf ``k``: Σ over leaves and pairs of uses, traced and laid out
    (with ``by_param``, a list of each parameter leaf's contribution instead of their sum);
    every einsum runs through :func:`contract` with ``contraction``."""
    out = axes.kernel_labels()
    floating = [c for c in jax.tree.leaves(s1.cotangents[k]) if _is_float(c)]
    dtype = jnp.result_type(*floating) if floating else jnp.float32
    per_leaf = []
    for leaf in range(n_params):
        total = jnp.zeros(axes.kernel_shape, dtype)
        uses1 = s1.analysis.uses_of_leaf(leaf)
        uses2 = s2.analysis.uses_of_leaf(leaf)
        for u1, u2 in itertools.product(uses1, uses2):
            chain1, chain2 = s1.analysis.uses[u1].chain, s2.analysis.uses[u2].chain
            if chain1.eqns and chain2.eqns and selections_disjoint(chain1.eqns[0], chain2.eqns[0]):
                continue  # different entries of the leaf (two layers of stacked weights): zero
            same = chain1.signature == chain2.signature
            n1, n2 = len(s1.specs[u1]), len(s2.specs[u2])
            for v1, v2 in itertools.product(range(n1), range(n2)):
                if not (_is_float(s1.cotangents[k][u1][v1]) and _is_float(s2.cotangents[k][u2][v2])):
                    continue  # an integer output (a loop counter) carries no tangent
                counter = itertools.count(10_000)
                lab = _Labeler(counter)
                spec1, spec2 = s1.specs[u1][v1], s2.specs[u2][v2]
                p1 = _use_aval(s1.analysis, u1)
                p2 = _use_aval(s2.analysis, u2)
                if same:
                    idx1, idx2 = [], []
                    ops1, _ = _side_operands(s1, k, u1, v1, axes, batch_axis, 1, lab.side(spec1), idx1)
                    ops2, _ = _side_operands(s2, k, u2, v2, axes, batch_axis, 2, lab.side(spec2), idx2)
                    present = _present(ops1 + ops2) | {l for _, ls, _ in idx1 + idx2 for l in ls}
                    ops = ops1 + ops2 + _index_operands(idx1, idx2, ops1[0].dtype)
                    sides = [1] * (len(ops1) // 2) + [2] * (len(ops2) // 2)
                    sides += [0] * ((len(ops) - len(ops1) - len(ops2)) // 2)
                    note = dict(kind="term", output_leaf=k, param_leaf=leaf, uses=(u1, u2),
                                outputs=(v1, v2), sides=sides,
                                primitives=(s1.analysis.uses[u1].primitive,
                                            s2.analysis.uses[u2].primitive),
                                structure=(spec1[3], spec2[3]))
                    # x2 is x1 and a use meets itself: x2's operands are x1's arrays
                    n_side = len(ops1) // 2
                    mirror = ({n_side + i: i for i in range(n_side)}
                              if s1 is s2 and (u1, v1) == (u2, v2) else None)
                    term = contract(ops, out, memory_limit, contraction, mirror, **note)
                    term = term * _multiplicity(spec1, p1.shape, present)
                else:
                    term = _pullback_term(s1, s2, k, u1, v1, u2, v2, axes, batch_axis, lab, out,
                                          memory_limit, leaf, contraction)
                total = total + term.astype(total.dtype)
        per_leaf.append(total / axes.trace_size)
    if by_param:
        return per_leaf
    return sum(per_leaf[1:], per_leaf[0]) if per_leaf else jnp.zeros(axes.kernel_shape, dtype)


def _pullback_term(s1, s2, k, u1, v1, u2, v2, axes, batch_axis, lab, out, memory_limit, leaf,
                   contraction):
    """Different chains to the same leaf: gradients in θ-space, then their inner product."""
    grads = []
    for side, u, v, no in ((s1, u1, v1, 1), (s2, u2, v2, 2)):
        spec = side.specs[u][v]
        ops, lead = _side_operands(side, k, u, v, axes, batch_axis, no, lab.side(spec))
        p_aval = _use_aval(side.analysis, u)
        p_labels = [_SHARED + j for j in range(len(p_aval.shape))]
        sizes = {l: s for l, s in zip(p_labels, p_aval.shape)}
        for arr, labels in zip(ops[0::2], ops[1::2]):
            sizes.update(zip(labels, arr.shape))
        g = _einsum_to(ops, lead + p_labels, sizes, memory_limit, contraction)
        chain = side.analysis.uses[u].chain
        leaf_aval = side.analysis.traced.tangent_vars[chain.leaf].aval
        grads.append((_pull_back(g, chain, leaf_aval, len(lead)), lead))
    (g1, lead1), (g2, lead2) = grads
    theta = list(range(2_000_000, 2_000_000 + g1.ndim - len(lead1)))
    note = dict(kind="term", output_leaf=k, param_leaf=leaf, uses=(u1, u2), outputs=(v1, v2),
                sides=[1, 2], primitives=(s1.analysis.uses[u1].primitive,
                                          s2.analysis.uses[u2].primitive),
                structure=("gradient (chain differs)", "gradient (chain differs)"))
    return contract([g1, lead1 + theta, g2, lead2 + theta], out, memory_limit, contraction,
                    **note)
