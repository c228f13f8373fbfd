"""Structural rules: broadcasts and reductions of a parameter value.

Transpose, reshape, squeeze, convert and copy on a parameter alone are bijections on its entries;
the uses pass folds them into the parameter's chain, so they never need a rule as a use.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc.ir import Form, OneHot
from ntkc.rules.registry import register, register_chain, register_selection


# Bijections on the entries of their one operand: folded into a parameter's chain.
register_chain(lax.transpose_p, lax.reshape_p, lax.convert_element_type_p, lax.copy_p,
               lax.squeeze_p, lax.reduce_precision_p)


def _slices_disjoint(a, b) -> bool:
    """Static slices with no entry in common: along some axis, their ranges do not meet."""
    for start_a, stop_a, start_b, stop_b in zip(a.params["start_indices"], a.params["limit_indices"],
                                                b.params["start_indices"], b.params["limit_indices"]):
        if stop_a <= start_b or stop_b <= start_a:
            return True
    return False


# A static slice selects entries (an unrolled scan's layer of stacked weights): a chain too.
register_selection(lax.slice_p, _slices_disjoint)


@register(lax.broadcast_in_dim_p, "identity on kept axes, broadcast on new ones")
def _broadcast_in_dim(*, operands, index, outs, shapes, broadcast_dimensions, **_):
    if index != 0:
        return None
    out_shape = outs[0].shape
    p_shape = shapes[0]
    out = [("y", d) for d in range(len(out_shape))]
    p = []
    for i, d in enumerate(broadcast_dimensions):
        if p_shape[i] == out_shape[d]:
            p.append(out[d])
        else:  # a size-1 axis expanded: p's own label, summed over on y's side
            p.append(("p", i))
    return [Form(out, p, (), "broadcast")]


@register(lax.reduce_sum_p, "identity on kept axes, summed on reduced ones")
def _reduce_sum(*, operands, index, outs, shapes, axes, **_):
    p = [("p", i) for i in range(len(shapes[0]))]
    out = [p[i] for i in range(len(p)) if i not in axes]
    return [Form(out, p, (), "reduction")]


def _separable(p_shape, out_shape, matrices, structure):
    """A form that acts on each axis alone: ``y = (E_0 ⊗ E_1 ⊗ ...) p``.

    ``matrices[a]`` is the ``(out_shape[a], p_shape[a])`` 0/1 matrix of axis ``a``, or None where
    the axis passes through unchanged (identity: a shared label, no factor).
    """
    out, p, factors = [], [], []
    for a, m in enumerate(matrices):
        if m is None:
            out.append(("a", a))
            p.append(("a", a))
        else:
            out.append(("y", a))
            p.append(("p", a))
            factors.append((m, (("y", a), ("p", a))))
    return Form(out, p, factors, structure)


def _eye_op(size, dtype, op):
    """The matrix of a linear op along one axis: the op applied to the identity's columns."""
    return op(jnp.eye(size, dtype=dtype))


@register(lax.slice_p, "identity on untouched axes, 0/1 selection on sliced ones")
def _slice(*, operands, index, outs, shapes, start_indices, limit_indices, strides=None, **_):
    shape = shapes[0]
    strides = strides or (1,) * len(shape)
    mats = []
    for a, n in enumerate(shape):
        if start_indices[a] == 0 and limit_indices[a] == n and strides[a] == 1:
            mats.append(None)
        else:
            mats.append(jnp.eye(n, dtype=outs[0].dtype)[start_indices[a] : limit_indices[a] : strides[a]])
    return [_separable(shape, outs[0].shape, mats, "selection")]


@register(lax.rev_p, "a permutation on reversed axes")
def _rev(*, operands, index, outs, shapes, dimensions, **_):
    mats = [jnp.eye(n, dtype=outs[0].dtype)[::-1] if a in dimensions else None
            for a, n in enumerate(shapes[0])]
    return [_separable(shapes[0], outs[0].shape, mats, "permutation")]


@register(lax.pad_p, "0/1 placement on padded axes")
def _pad(*, operands, index, outs, shapes, padding_config, **_):
    if index != 0:
        return None  # the padding value as p: a broadcast of a scalar into the border
    dtype = outs[0].dtype
    mats = []
    for a, (lo, hi, interior) in enumerate(padding_config):
        if (lo, hi, interior) == (0, 0, 0):
            mats.append(None)
        else:
            eye = jnp.eye(shapes[0][a], dtype=dtype)
            zero = jnp.zeros((), dtype)
            mats.append(lax.pad(eye, zero, [(lo, hi, interior), (0, 0, 0)]))
    return [_separable(shapes[0], outs[0].shape, mats, "placement")]


@register(lax.concatenate_p, "0/1 placement along the concatenated axis")
def _concatenate(*, operands, index, outs, shapes, dimension, **_):
    offset = sum(s[dimension] for s in shapes[:index])
    n, total = shapes[index][dimension], outs[0].shape[dimension]
    mat = jnp.eye(total, dtype=outs[0].dtype)[:, offset : offset + n]
    mats = [mat if a == dimension else None for a in range(len(shapes[index]))]
    return [_separable(shapes[index], outs[0].shape, mats, "placement")]


def _split_forms(*, operands, index, outs, shapes, axis, **_):
    forms, offset = [], 0
    for o in outs:
        n = o.shape[axis]
        mat = jnp.eye(shapes[0][axis], dtype=o.dtype)[offset : offset + n]
        mats = [mat if a == axis else None for a in range(len(shapes[0]))]
        forms.append(_separable(shapes[0], o.shape, mats, "selection"))
        offset += n
    return forms


register(getattr(lax, "split_p", None), "0/1 selection per output along the split axis")(_split_forms)


@register(lax.dynamic_slice_p, "0/1 selection at traced offsets")
def _dynamic_slice(*, operands, index, outs, shapes, slice_sizes, **_):
    if index != 0 or any(s is None for s in operands[1:]):
        return None
    mats = []
    for a, n in enumerate(shapes[0]):
        if slice_sizes[a] == n:
            mats.append(None)
        else:
            eye = jnp.eye(n, dtype=outs[0].dtype)
            mats.append(lax.dynamic_slice_in_dim(eye, operands[1 + a], slice_sizes[a], axis=0))
    return [_separable(shapes[0], outs[0].shape, mats, "selection")]


@register(lax.dynamic_update_slice_p, "0/1 placement at traced offsets (update) or a mask (operand)")
def _dynamic_update_slice(*, operands, index, outs, shapes, **_):
    starts = operands[2:]
    if any(s is None for s in starts):
        return None
    dtype = outs[0].dtype
    if index == 1:  # the update is placed into the operand's shape
        mats = []
        for a, n in enumerate(shapes[1]):
            total = outs[0].shape[a]
            eye = jnp.eye(total, dtype=dtype)
            mats.append(None if n == total else
                        lax.dynamic_slice_in_dim(eye, starts[a], n, axis=1))
        return [_separable(shapes[1], outs[0].shape, mats, "placement")]
    if index == 0:  # the operand outside the updated window is kept: a diagonal mask
        mask = lax.dynamic_update_slice(jnp.ones(outs[0].shape, dtype),
                                        jnp.zeros(shapes[1], dtype), starts)
        labels = tuple(range(len(outs[0].shape)))
        return [Form(labels, labels, ((mask, labels),), "diagonal (mask)")]
    return None


@register(lax.cumsum_p, "triangular along the summed axis")
def _cumsum(*, operands, index, outs, shapes, axis, reverse=False, **_):
    n = shapes[0][axis]
    tri = jnp.tril(jnp.ones((n, n), outs[0].dtype))
    mats = [(tri.T if reverse else tri) if a == axis else None for a in range(len(shapes[0]))]
    return [_separable(shapes[0], outs[0].shape, mats, "triangular")]


@register(lax.squeeze_p, "identity (size-1 axes dropped)")
def _squeeze(*, operands, index, outs, shapes, dimensions, **_):
    p = [("p", i) for i in range(len(shapes[0]))]
    out = [p[i] for i in range(len(p)) if i not in dimensions]
    return [Form(out, p, (), "identity")]


@register(lax.transpose_p, "a permutation of axes")
def _transpose(*, operands, index, outs, shapes, permutation, **_):
    p = [("p", i) for i in range(len(shapes[0]))]
    return [Form([p[i] for i in permutation], p, (), "identity (permuted axes)")]


def _gather_mode_ids(ids, size, mode):
    """Indices as the gather reads them: clipped, or out-of-range marked with ``size``."""
    name = str(mode).upper()
    if "CLIP" in name or "PROMISE" in name:
        return jnp.clip(ids, 0, size - 1)
    return jnp.where((ids >= 0) & (ids < size), ids, size)


@register(lax.gather_p, "embedding lookup: one-hot rows by index (token equality between sides)")
def _gather(*, operands, index, outs, shapes, dimension_numbers, slice_sizes, mode=None, **_):
    dn = dimension_numbers
    ids = operands[1]
    p_shape = shapes[0]
    if (
        index != 0 or ids is None
        or tuple(dn.collapsed_slice_dims) != (0,) or tuple(dn.start_index_map) != (0,)
        or tuple(getattr(dn, "operand_batching_dims", ())) != ()
        or tuple(slice_sizes) != (1,) + tuple(p_shape[1:])
        or ids.shape[-1] != 1
    ):
        return None
    n_batch = ids.ndim - 1
    out_rank = len(outs[0].shape)
    if tuple(dn.offset_dims) != tuple(range(n_batch, out_rank)):
        return None
    out = [("i", a) for a in range(n_batch)] + [("d", a) for a in range(1, len(p_shape))]
    p = ["v"] + [("d", a) for a in range(1, len(p_shape))]
    ids = _gather_mode_ids(ids[..., 0], p_shape[0], mode)
    onehot = OneHot(tuple(out[:n_batch]) + ("v",), p_shape[0])
    return [Form(out, p, ((ids, onehot),), "selection of rows (token equality)")]


def window_selection(n_out, n_taps, n_in, stride, lo, lhs_dilation, rhs_dilation, dtype):
    """S[s, k, j] = 1 where output s reads input j through window tap k (one spatial axis).

    Input j sits at ``lo + j * lhs_dilation`` in the padded, dilated signal; output s with tap k
    reads position ``s * stride + k * rhs_dilation``.
    """
    s = np.arange(n_out)[:, None, None]
    k = np.arange(n_taps)[None, :, None]
    j = np.arange(n_in)[None, None, :]
    return jnp.asarray(s * stride + k * rhs_dilation == lo + j * lhs_dilation, dtype)


@register(lax.reduce_window_sum_p, "per-axis window sums (0/1 band matrices); average pooling")
def _reduce_window_sum(*, operands, index, outs, shapes, window_dimensions, window_strides,
                       padding, base_dilation, window_dilation, **_):
    mats = []
    for a, n in enumerate(shapes[0]):
        trivial = (window_dimensions[a], window_strides[a], tuple(padding[a]), base_dilation[a],
                   window_dilation[a]) == (1, 1, (0, 0), 1, 1)
        mats.append(None if trivial else window_selection(
            outs[0].shape[a], window_dimensions[a], n, window_strides[a], padding[a][0],
            base_dilation[a], window_dilation[a], outs[0].dtype).sum(1))
    return [_separable(shapes[0], outs[0].shape, mats, "window sums")]
