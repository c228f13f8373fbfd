"""Rules for the layers where weights enter: dot_general and conv_general_dilated.

For ``y = x W`` the form is ``y[b, j] = x[b, i] W[i, j]``: the factor is the layer input, so the
NTK term contracts ``c1 x1 x2ᵀ c2ᵀ`` in whatever order is cheapest and ``∂y/∂W`` (of size
``|y|·|W|``) is never built.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc.ir import Form
from ntkc.rules.registry import register, register_flops, register_per_example_gradient_factor
from ntkc.rules.structural import window_selection as _window_selection


@register(lax.dot_general_p, "identity on the batch and free axes of p; dense factor: the other operand")
def _dot_general(*, operands, index, outs, shapes, dimension_numbers, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    other = operands[1 - index]
    if other is None:
        return None
    lhs = [("l", i) for i in range(len(shapes[0]))]
    rhs = [("r", i) for i in range(len(shapes[1]))]
    for k, (a, b) in enumerate(zip(lc, rc)):
        lhs[a] = rhs[b] = ("c", k)
    for k, (a, b) in enumerate(zip(lb, rb)):
        lhs[a] = rhs[b] = ("b", k)
    out = (
        [("b", k) for k in range(len(lb))]
        + [lhs[i] for i in range(len(lhs)) if i not in lc and i not in lb]
        + [rhs[i] for i in range(len(rhs)) if i not in rc and i not in rb]
    )
    p_labels, o_labels = (lhs, rhs) if index == 0 else (rhs, lhs)
    return [Form(out, p_labels, ((other, o_labels),), "dense factor (other operand)")]


def _conv_labels(dn, out_rank, lhs_rank, rhs_rank):
    """Labels of y, the input and the kernel of a convolution: batch n, features c (in) and o
    (out), output pixels ("s", i), input pixels ("j", i), filter taps ("k", i)."""
    out, lhs, rhs = [None] * out_rank, [None] * lhs_rank, [None] * rhs_rank
    out[dn.out_spec[0]], out[dn.out_spec[1]] = "n", "o"
    lhs[dn.lhs_spec[0]], lhs[dn.lhs_spec[1]] = "n", "c"
    rhs[dn.rhs_spec[0]], rhs[dn.rhs_spec[1]] = "o", "c"
    for i in range(out_rank - 2):
        out[dn.out_spec[2 + i]] = ("s", i)
        lhs[dn.lhs_spec[2 + i]] = ("j", i)
        rhs[dn.rhs_spec[2 + i]] = ("k", i)
    return out, lhs, rhs


@register(lax.conv_general_dilated_p,
          "kernel as p: image patches as the factor; input as p: per-axis window selections and "
          "the kernel")
def _conv(*, operands, index, outs, shapes, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, **_):
    if batch_group_count != 1 or operands[1 - index] is None:
        return None
    dn = dimension_numbers
    out_shape = outs[0].shape
    out, lhs_l, rhs_l = _conv_labels(dn, len(out_shape), len(shapes[0]), len(shapes[1]))
    groups = feature_group_count
    n_out, n_in = shapes[1][dn.rhs_spec[0]], shapes[0][dn.lhs_spec[1]]
    if index == 0:
        return [_conv_input_form(operands[1], shapes, out_shape, out, lhs_l, rhs_l, dn, groups,
                                 window_strides, padding, lhs_dilation, rhs_dilation, outs[0].dtype)]
    filter_shape = tuple(shapes[1][d] for d in dn.rhs_spec[2:])
    patches = image_patches(operands[0], filter_shape, out_shape, window_strides, padding,
                            lhs_dilation, rhs_dilation, dn)
    feat = dn.out_spec[1]
    taps = [("k", i) for i in range(len(filter_shape))]
    if groups == 1:
        labels = out[:feat] + ["c"] + taps + out[feat + 1:]
        return [Form(out, rhs_l, ((patches, labels),), "identity on out features; dense factor (patches)")]
    # Grouped: output feature o reads input features (o // per_group_out) * per_group_in + c.
    per_in, per_out = n_in // groups, n_out // groups
    channel = (np.arange(n_out)[:, None] // per_out) * per_in + np.arange(per_in)[None, :]
    patches = jnp.take(patches, jnp.asarray(channel), axis=feat)  # c -> (o, c within group)
    labels = out[:feat] + ["o", "c"] + taps + out[feat + 1:]
    return [Form(out, rhs_l, ((patches, labels),), "identity on out features; dense factor (grouped patches)")]


def image_patches(lhs, filter_shape, out_shape, strides, padding, lhs_dilation, rhs_dilation, dn):
    """The conv's input windows in y's layout, y's feature axis replaced by (C, *filter) axes.

    One gather from the padded, dilated input: output pixel s and tap k read input position
    ``s * stride + k * rhs_dilation`` along each spatial axis. (JAX's
    ``conv_general_dilated_patches`` is a grouped convolution with a one-hot kernel, which
    XLA:CPU runs 10-100x slower; one slice per tap runs as fast as the gather but doubles
    XLA's compile time.)
    """
    d = len(filter_shape)
    spatial = list(dn.lhs_spec[2:])
    pads = [(0, 0, 0)] * lhs.ndim
    for axis, (lo, hi), dil in zip(spatial, padding, lhs_dilation):
        pads[axis] = (lo, hi, dil - 1)
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype), pads)
    x = jnp.transpose(x, [dn.lhs_spec[0], *spatial, dn.lhs_spec[1]])  # (N, *spatial, C)
    out_sizes = [out_shape[a] for a in dn.out_spec[2:]]
    index = []
    for i, (n, k, s, r) in enumerate(zip(out_sizes, filter_shape, strides, rhs_dilation)):
        shape = [1] * (2 * d)
        shape[i], shape[d + i] = n, k
        index.append((np.arange(n)[:, None] * s + np.arange(k)[None, :] * r).reshape(shape))
    patches = x[(slice(None), *index, slice(None))]  # (N, *out spatial, *filter, C)
    # y's layout, its feature axis expanded to (C, *filter)
    source = {dn.out_spec[0]: [0], dn.out_spec[1]: [1 + 2 * d] + list(range(1 + d, 1 + 2 * d))}
    for i, axis in enumerate(dn.out_spec[2:]):
        source[axis] = [1 + i]
    return jnp.transpose(patches, [a for axis in range(len(out_shape)) for a in source[axis]])


def _conv_input_form(kernel, shapes, out_shape, out, lhs_l, rhs_l, dn, groups, strides, padding,
                     lhs_dilation, rhs_dilation, dtype):
    factors = []
    for i in range(len(out_shape) - 2):
        factors.append((
            _window_selection(out_shape[dn.out_spec[2 + i]], shapes[1][dn.rhs_spec[2 + i]],
                              shapes[0][dn.lhs_spec[2 + i]], strides[i], padding[i][0],
                              lhs_dilation[i], rhs_dilation[i], dtype),
            (("s", i), ("k", i), ("j", i)),
        ))
    if groups > 1:  # expand the kernel to a block-diagonal one over all input features
        o_axis, c_axis = dn.rhs_spec[0], dn.rhs_spec[1]
        n_out, per_in = shapes[1][o_axis], shapes[1][c_axis]
        n_in = per_in * groups
        kernel = jnp.take(kernel, jnp.asarray(np.arange(n_in) % per_in), axis=c_axis)
        mask = (np.arange(n_in)[:, None] // per_in) == (np.arange(n_out)[None, :] // (n_out // groups))
        shape = [1] * kernel.ndim
        shape[c_axis], shape[o_axis] = n_in, n_out
        order = sorted([c_axis, o_axis])
        mask = mask if order == [c_axis, o_axis] else mask.T
        kernel = kernel * jnp.asarray(mask, kernel.dtype).reshape(shape)
    factors.append((kernel, tuple(rhs_l)))
    return Form(out, lhs_l, factors, "per-axis window selections; dense factor (the kernel)")


# FLOPs, exact (a multiply-add counts 2), for the cost model (``ntkc.passes.cost.eqn_flops``).

def _out_size(eqn) -> int:
    return math.prod(eqn.outvars[0].aval.shape)


@register_flops(lax.dot_general_p)
def _dot_general_flops(eqn) -> float:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * _out_size(eqn) * math.prod(lhs[d] for d in contract)


@register_flops(lax.conv_general_dilated_p)
def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    window = math.prod(rhs[d] for d in dn.rhs_spec[2:])
    return 2 * _out_size(eqn) * window * rhs[dn.rhs_spec[1]]


# Per-example convolution weight gradients by vmap(jacrev): grouped convolutions, measured
# 2.5-4x slower than the same FLOPs as matmuls (CNN and WideResNet, CPU and H100).
register_per_example_gradient_factor(lax.conv_general_dilated_p, 3.0)
