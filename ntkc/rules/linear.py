"""Rules for the layers where weights enter: dot_general and conv_general_dilated.

For ``y = x W`` the form is ``y[b, j] = x[b, i] W[i, j]``: the factor is the layer input, so the
NTK term contracts ``c1 x1 x2ᵀ c2ᵀ`` in whatever order is cheapest and ``∂y/∂W`` (of size
``|y|·|W|``) is never built.
"""

from __future__ import annotations

from jax import lax

from ntkc.ir import Form
from ntkc.rules.registry import register


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


@register(lax.conv_general_dilated_p, "kernel as p: image patches as the factor; input as p: dense")
def _conv(*, operands, index, outs, shapes, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, **_):
    lhs = operands[0]
    if index != 1 or lhs is None or feature_group_count != 1 or batch_group_count != 1:
        return None
    dn = dimension_numbers
    rhs_shape = shapes[1]
    filter_shape = tuple(rhs_shape[d] for d in dn.rhs_spec[2:])
    patches = lax.conv_general_dilated_patches(
        lhs, filter_shape, window_strides, padding, lhs_dilation, rhs_dilation, dn
    )
    # patches has y's layout with features (C, *filter) flattened: split that axis.
    n_in = lhs.shape[dn.lhs_spec[1]]
    feat = dn.out_spec[1]
    patches = patches.reshape(patches.shape[:feat] + (n_in,) + filter_shape + patches.shape[feat + 1 :])
    out = [None] * len(outs[0].shape)
    out[dn.out_spec[0]] = "n"
    out[feat] = "o"
    for i, d in enumerate(dn.out_spec[2:]):
        out[d] = ("s", i)
    patch_labels = out[:feat] + ["c"] + [("k", i) for i in range(len(filter_shape))] + out[feat + 1 :]
    p = [None] * len(rhs_shape)
    p[dn.rhs_spec[0]] = "o"
    p[dn.rhs_spec[1]] = "c"
    for i, d in enumerate(dn.rhs_spec[2:]):
        p[d] = ("k", i)
    return [Form(out, p, ((patches, patch_labels),), "identity on out features; dense factor (patches)")]
