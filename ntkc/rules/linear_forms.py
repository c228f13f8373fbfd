"""Linear forms for the cotangent pass: equations of the linear map rewritten into the same map
in a form whose transpose runs faster (see ``register_linear_form``).

The cotangent pass transposes everything downstream of the parameter uses, once per output basis
vector and example. How XLA runs a primitive's transpose there matters as much as any
contraction order (``bench/profile.py`` shows it per op).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkc._compat import select_and_gather_add_p
from ntkc.rules.registry import register_linear_form


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _phases(a, fill, padding, size, strides) -> list:
    """``a`` padded to ``size`` and split into its stride phases: phase ``r`` (row-major over the
    axes' residues) holds the entries ``r + strides * i``. A reshape, a transpose and
    ``lax.split``, whose transposes are a transpose and one concatenate."""
    pads = [(lo, total - n - lo, 0) for n, (lo, _), total in zip(a.shape, padding, size)]
    a = lax.pad(a, jnp.array(fill, a.dtype), pads)
    blocks = [total // s for total, s in zip(size, strides)]
    a = a.reshape([v for pair in zip(blocks, strides) for v in pair])
    rank = len(blocks)
    a = a.transpose([2 * i + 1 for i in range(rank)] + [2 * i for i in range(rank)])
    a = a.reshape((-1, *blocks))
    return [part[0] for part in lax.split(a, [1] * a.shape[0], axis=0)]


def _windows(sizes, padding, window, strides) -> tuple[list, list]:
    """Per axis, the number of windows of a strided window op (pooling, convolution), and the
    length of the stride phases that hold the padded input and every window's entries."""
    count = [(n + lo + hi - w) // s + 1
             for n, (lo, hi), w, s in zip(sizes, padding, window, strides)]
    blocks = [max(-(-(n + lo + hi) // s), c + -(-w // s) - 1)
              for n, (lo, hi), w, s, c in zip(sizes, padding, window, strides, count)]
    return count, blocks


def _window_winners(operand, dims, strides, padding, larger: bool):
    """For each pooling window, the position of its first maximum (minimum) relative to the
    window's first entry, as a flat index over the padded window axes (row-major), with the
    flat step of each window axis: ``(positions, {axis: step})``; None where that index would
    not fit int32.

    One variadic ``reduce_window`` over (value, position): it is not an elementwise op, so XLA
    materialises it once per example instead of fusing the comparisons into every cotangent's
    transpose, which recomputed them per cotangent and per window entry (the transpose of the
    running-maximum chain this replaces took 0.3 s of a 2.4 s ResNet-18 stem program). Ties go
    to the smaller position, the first in row-major order, as ``ge`` / ``le`` keep it.
    """
    fill = jnp.array(-jnp.inf if larger else jnp.inf, operand.dtype)
    padded = lax.pad(operand, fill, [(lo, hi, 0) for lo, hi in padding])
    windowed = [a for a, d in enumerate(dims) if d > 1]
    step = {a: math.prod(padded.shape[b] for b in windowed if b > a) for a in windowed}
    if not windowed or math.prod(padded.shape[a] for a in windowed) >= 2**31:
        return None
    position = sum(lax.broadcasted_iota(jnp.int32, padded.shape, a) * step[a] for a in windowed)

    def first_best(x, y):
        (vx, px), (vy, py) = x, y
        keep = (vx > vy if larger else vx < vy) | ((vx == vy) & (px < py))
        return jnp.where(keep, vx, vy), jnp.where(keep, px, py)

    _, best = lax.reduce_window((padded, position), (fill, jnp.int32(2**31 - 1)), first_best,
                                dims, strides, "VALID")
    start = sum(lax.broadcasted_iota(jnp.int32, best.shape, a) * (strides[a] * step[a])
                for a in windowed)
    return best - start, step


@register_linear_form(select_and_gather_add_p)
def _pooled_tangent(eqn, args):
    """Max (min) pooling's JVP: the tangent at each window's first maximum (minimum).

    Its transpose in JAX is ``select_and_scatter_add``, which XLA:CPU expands into an iota of
    indices per window entry, a concatenate and a scatter: 14% of the op time of ResNet-18's
    structured program at N=8, O=8, 224² (``bench/profile.py``). Here each window's winner is
    found once (:func:`_window_winners`), the tangent is split into its stride phases once, and
    each window entry is a contiguous slice of its phase, kept where it is the winner: the
    transpose is masks, small pads, a concatenate and a transpose. (Strided slices of the
    padded arrays instead transpose into one full-size pad per window entry, which XLA:CPU does
    not fuse: no faster than select-and-scatter.) On other backends (a native
    select-and-scatter, unmeasured) JAX's form is kept.
    """
    p = eqn.params
    if (not _on_cpu() or any(d != 1 for d in p["base_dilation"])
            or any(d != 1 for d in p["window_dilation"])
            or p["select_prim"] not in (lax.ge_p, lax.le_p)):
        return None
    tangent, operand = args
    dims, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    winners = _window_winners(operand, dims, strides, padding, p["select_prim"] is lax.ge_p)
    if winners is None:
        return None
    winner, step = winners
    count, blocks = _windows(operand.shape, padding, dims, strides)
    size = [s * b for s, b in zip(strides, blocks)]
    tangents = _phases(tangent, 0, padding, size, strides)
    value = None
    for offset in itertools.product(*(range(d) for d in dims)):
        phase = int(np.ravel_multi_index([o % s for o, s in zip(offset, strides)], strides))
        start = [o // s for o, s in zip(offset, strides)]
        t = lax.slice(tangents[phase], start, [b + c for b, c in zip(start, count)])
        term = jnp.where(winner == sum(o * step.get(a, 0) for a, o in enumerate(offset)), t, 0)
        value = term if value is None else value + term
    return [value]


MAX_CONV_PHASES = 16  # stride phases read by one strided convolution's form, at most


@register_linear_form(lax.conv_general_dilated_p)
def _strided_conv(eqn, args):
    """A strided convolution as the sum of stride-1 convolutions of its input's stride phases,
    phase ``r`` against the kernel taps ``r, r + s, ...`` (the same taps, the same FLOPs).

    Its transpose, the input gradient in the cotangent pass, is then stride-1 convolutions and
    one concatenate, where JAX's is a convolution over the input-dilated cotangent, which
    XLA:CPU runs at a quarter to a half of its stride-1 rate: ResNet-18's 3x3 stride-2 input
    gradients at batch 64 ran 68-107 GFLOP/s against 118-235 in this form, its 1x1 stride-2
    ones 20 against 46. The rewrite is of the bilinear map itself, so it holds whichever
    operand is the tangent. Only on CPU (where it was measured) and for the common case: no
    dilation, no batch groups, non-negative padding, at most ``MAX_CONV_PHASES`` phases read.
    """
    p = eqn.params
    strides = p["window_strides"]
    if (not _on_cpu() or all(s == 1 for s in strides)
            or any(d != 1 for d in p["lhs_dilation"]) or any(d != 1 for d in p["rhs_dilation"])
            or p["batch_group_count"] != 1 or any(lo < 0 or hi < 0 for lo, hi in p["padding"])):
        return None
    lhs, rhs = args
    dn = p["dimension_numbers"]
    lhs_axes, rhs_axes = dn.lhs_spec[2:], dn.rhs_spec[2:]
    kernel = [rhs.shape[a] for a in rhs_axes]
    sizes = [lhs.shape[a] for a in lhs_axes]
    count, blocks = _windows(sizes, p["padding"], kernel, strides)
    if any(c <= 0 for c in count):
        return None
    axis_strides, axis_padding, size = [1] * lhs.ndim, [(0, 0)] * lhs.ndim, list(lhs.shape)
    for a, s, pad, b in zip(lhs_axes, strides, p["padding"], blocks):
        axis_strides[a], axis_padding[a], size[a] = s, pad, s * b
    phases = _phases(lhs, 0, axis_padding, size, axis_strides)
    residues = [r for r in itertools.product(*(range(s) for s in strides))
                if all(r_ < k for r_, k in zip(r, kernel))]  # a 1x1 kernel reads one phase
    if len(residues) > MAX_CONV_PHASES:  # a patch embedding (16x16 / 16) would be 256 convs
        return None
    out = None
    for residue in residues:
        taps = [len(range(r, k, s)) for r, k, s in zip(residue, kernel, strides)]
        axis_residue = [0] * lhs.ndim
        for a, r in zip(lhs_axes, residue):
            axis_residue[a] = r
        x = phases[int(np.ravel_multi_index(axis_residue, axis_strides))]
        limit = list(x.shape)
        for a, c, t in zip(lhs_axes, count, taps):
            limit[a] = c + t - 1
        x = lax.slice(x, [0] * x.ndim, limit)
        start, step = [0] * rhs.ndim, [1] * rhs.ndim
        for a, r, s in zip(rhs_axes, residue, strides):
            start[a], step[a] = r, s
        w = lax.slice(rhs, start, rhs.shape, step)
        y = lax.conv_general_dilated(
            x, w, (1,) * len(strides), [(0, 0)] * len(strides), dimension_numbers=dn,
            feature_group_count=p["feature_group_count"], precision=p["precision"],
            preferred_element_type=p["preferred_element_type"])
        out = y if out is None else out + y
    return [out]
