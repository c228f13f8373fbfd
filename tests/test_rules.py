"""Every registered rule, checked against the primitive it describes.

A table of cases (name, function, operand shapes, which operand is the parameter ``p``, dtype;
plus the primitive expected to consume ``p`` and the structural claims the rule makes there).
``test_rule`` runs one case:

* ``primitive``: ``p`` is consumed by the expected primitive, whose outputs are the function's;
* ``jacobians``: the rule's forms (one per output) reproduce the primitive: the Jacobian of
  ``apply_form(form, p)`` equals ``jacfwd`` and ``jacrev`` of the primitive in ``p``;
* ``well_formed``: one label per axis, consistent sizes, a non-empty structure string;
* then each structural claim of the case on its own (see ``CHECKS``): identity labels, the dense
  factor being the other operand, the size of the conv patches, 0/1 selection matrices, the
  rule declining, ...

Each claim is checked even when another fails, and every failure is reported under its claim's
name. The rule and all the Jacobians of a primitive's cases are computed under one ``jax.jit``
(rules run under jit and vmap in the pipeline too): XLA's fixed cost per compilation dominates
these tiny programs. ``test_dense_fallback`` checks :func:`ntkc.rules.dense_forms` the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ntkc._compat import add_any_p, bind
from ntkc.rules import dense_forms, lookup, registered
from ntkc.ir import OneHot
from ntkc.testing import apply_form, consuming_equation, rule_forms

F32, F64 = jnp.float32, jnp.float64


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


class Const(NamedTuple):
    """An operand given as a fixed value (indices, predicates, ...) instead of a shape."""

    value: Any


class Pos(NamedTuple):
    """A float operand of this shape with entries in [0.5, 2] (a denominator)."""

    shape: tuple


class Case(NamedTuple):
    name: str
    fn: Callable
    shapes: tuple  # per operand: a shape (random normal of `dtype`), Pos or Const
    index: int  # which operand is the parameter p
    dtype: Any
    primitive: str  # the primitive of the equation that consumes p
    claims: tuple = ()  # structural claims, each checked on its own (see CHECKS)


CASES: list[Case] = []


def case(name, fn, shapes, index, primitive, claims=(), dtypes=(F32, F64)):
    for dt in dtypes:
        CASES.append(Case(f"{name}-{jnp.dtype(dt).name}", fn, tuple(shapes), index, dt, primitive,
                          tuple(claims)))


def i32(*v):
    return Const(np.asarray(v if len(v) != 1 else v[0], np.int32))


# ---- dot_general ----------------------------------------------------------------------------

def dg(lc, rc, lb=(), rb=()):
    return lambda a, b: lax.dot_general(a, b, ((lc, rc), (lb, rb)))


DENSE = ("other_operand",)
case("dot-matmul-p_rhs", dg((1,), (0,)), [(5, 3), (3, 4)], 1, "dot_general", DENSE)
case("dot-matmul-p_lhs", dg((1,), (0,)), [(5, 3), (3, 4)], 0, "dot_general", DENSE)
case("dot-batch-p_lhs", dg((2,), (1,), (0,), (0,)), [(2, 3, 4), (2, 4, 5)], 0, "dot_general",
     DENSE, dtypes=(F64,))
case("dot-batch-p_rhs", dg((2,), (1,), (0,), (0,)), [(2, 3, 4), (2, 4, 5)], 1, "dot_general", DENSE)
# batch and contracting axes not in front, on both sides
case("dot-batch_mid-p_rhs", dg((0,), (2,), (1,), (0,)), [(4, 2, 3), (2, 5, 4)], 1, "dot_general",
     DENSE, dtypes=(F64,))
case("dot-batch_mid-p_lhs", dg((0,), (2,), (1,), (0,)), [(4, 2, 3), (2, 5, 4)], 0, "dot_general",
     DENSE, dtypes=(F64,))
case("dot-contract2-p_rhs", dg((1, 2), (0, 1)), [(3, 2, 4), (2, 4, 5)], 1, "dot_general", DENSE)
case("dot-contract2-p_lhs", dg((1, 2), (0, 1)), [(3, 2, 4), (2, 4, 5)], 0, "dot_general",
     DENSE, dtypes=(F64,))
case("dot-contract2_swapped-p_rhs", dg((2, 1), (0, 1)), [(3, 2, 4), (4, 2, 5)], 1, "dot_general",
     DENSE, dtypes=(F64,))
case("dot-matvec-p_vec", dg((1,), (0,)), [(5, 3), (3,)], 1, "dot_general", DENSE)
case("dot-matvec-p_mat", dg((1,), (0,)), [(5, 3), (3,)], 0, "dot_general", DENSE, dtypes=(F64,))
case("dot-vecmat-p_mat", dg((0,), (0,)), [(3,), (3, 4)], 1, "dot_general", DENSE, dtypes=(F64,))
case("dot-inner-p_lhs", dg((0,), (0,)), [(6,), (6,)], 0, "dot_general", DENSE, dtypes=(F64,))
case("dot-outer-p_rhs", dg((), ()), [(3,), (4,)], 1, "dot_general", DENSE, dtypes=(F64,))
# two batch axes, in a different order on each side
case("dot-batch2_swapped-p_rhs", dg((2,), (0,), (1, 0), (1, 2)), [(2, 3, 4), (4, 3, 2, 5)], 1,
     "dot_general", DENSE, dtypes=(F64,))
case("dot-batch_only-p_lhs", dg((), (), (0,), (0,)), [(3, 2), (3, 4)], 0, "dot_general", DENSE,
     dtypes=(F64,))

# ---- conv_general_dilated: the kernel as p ------------------------------------------------

def conv(strides, padding, dn, lhs_dil=None, rhs_dil=None, groups=1, batch_groups=1):
    return lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, lhs_dil, rhs_dil, dimension_numbers=dn,
        feature_group_count=groups, batch_group_count=batch_groups)


NHWC, NCHW = ("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")
NWC, NCW = ("NWC", "WIO", "NWC"), ("NCH", "OIH", "NCH")
PATCHES = ("patches",)
case("conv2d-nhwc-same", conv((1, 1), "SAME", NHWC), [(2, 5, 5, 3), (3, 3, 3, 4)], 1,
     "conv_general_dilated", PATCHES)
case("conv2d-nhwc-valid-stride", conv((2, 1), "VALID", NHWC), [(2, 7, 6, 2), (3, 2, 2, 3)], 1,
     "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv2d-nchw-explicit-rhsdil", conv((1, 1), ((1, 2), (0, 1)), NCHW, rhs_dil=(2, 1)),
     [(2, 3, 6, 5), (4, 3, 2, 3)], 1, "conv_general_dilated", PATCHES)
case("conv2d-nchw-lhsdil", conv((1, 1), ((1, 1), (1, 1)), NCHW, lhs_dil=(2, 2)),
     [(1, 2, 3, 4), (3, 2, 3, 3)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv2d-nhwc-stride-dil-same", conv((2, 2), "SAME", NHWC, rhs_dil=(1, 2)),
     [(2, 6, 7, 2), (2, 3, 2, 3)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv2d-mixed-layout", conv((1, 2), "VALID", ("NHWC", "OIHW", "NCHW")),
     [(2, 5, 6, 3), (4, 3, 2, 2)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv1d-nwc-same-stride", conv((2,), "SAME", NWC), [(2, 7, 3), (3, 3, 4)], 1,
     "conv_general_dilated", PATCHES)
case("conv1d-ncw-valid-rhsdil", conv((1,), "VALID", NCW, rhs_dil=(2,)), [(2, 3, 8), (4, 3, 3)], 1,
     "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv1d-nwc-explicit-lhsdil", conv((1,), ((2, 1),), NWC, lhs_dil=(3,)), [(1, 4, 2), (2, 2, 3)],
     1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv2d-rhs_spatial_swapped", conv((1, 1), "SAME", ("NCHW", "OIWH", "NCHW")),
     [(2, 3, 5, 6), (4, 3, 2, 3)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv2d-negative_padding", conv((1, 1), ((-1, 1), (2, -1)), NHWC),
     [(2, 5, 6, 2), (2, 3, 2, 3)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
case("conv3d-ndhwc", conv((1, 2, 1), "SAME", ("NDHWC", "DHWIO", "NDHWC")),
     [(1, 3, 4, 5, 2), (2, 2, 3, 2, 3)], 1, "conv_general_dilated", PATCHES, dtypes=(F64,))
# feature groups: the patches of each output feature's own group of input features
GROUPED = ("grouped_patches",)
case("conv2d-groups2", conv((1, 1), "SAME", NHWC, groups=2), [(2, 4, 4, 4), (3, 3, 2, 6)], 1,
     "conv_general_dilated", GROUPED)
case("conv2d-groups3-nchw", conv((2, 1), ((1, 0), (0, 1)), NCHW, groups=3),
     [(1, 6, 5, 4), (6, 2, 2, 3)], 1, "conv_general_dilated", GROUPED, dtypes=(F64,))
case("conv1d-depthwise", conv((1,), "SAME", NWC, groups=3), [(2, 5, 3), (3, 1, 3)], 1,
     "conv_general_dilated", GROUPED, dtypes=(F64,))
# the input as p: per spatial axis a 0/1 window selection, and the kernel as the dense factor
INPUT = ("conv_input",)
case("conv2d-input_as_p", conv((1, 1), "SAME", NHWC), [(2, 4, 4, 3), (3, 3, 3, 2)], 0,
     "conv_general_dilated", INPUT)
case("conv2d-input_as_p-stride-dil", conv((2, 1), ((1, 2), (0, 1)), NCHW, rhs_dil=(1, 2)),
     [(1, 2, 6, 5), (3, 2, 2, 2)], 0, "conv_general_dilated", INPUT, dtypes=(F64,))
case("conv2d-input_as_p-lhsdil-negpad", conv((1, 1), ((1, -1), (2, 0)), NHWC, lhs_dil=(2, 3)),
     [(1, 3, 2, 2), (2, 3, 2, 3)], 0, "conv_general_dilated", INPUT, dtypes=(F64,))
case("conv2d-input_as_p-groups2-nchw", conv((1, 1), "VALID", NCHW, groups=2),
     [(1, 4, 4, 3), (6, 2, 2, 2)], 0, "conv_general_dilated", INPUT, dtypes=(F64,))
case("conv2d-input_as_p-groups2-nhwc", conv((1, 2), "SAME", NHWC, groups=2),
     [(2, 3, 4, 4), (2, 2, 2, 4)], 0, "conv_general_dilated", INPUT, dtypes=(F64,))
case("conv1d-input_as_p", conv((2,), "SAME", NWC), [(2, 7, 2), (3, 2, 3)], 0,
     "conv_general_dilated", INPUT)
# batch_group_count > 1 (the kernel gradient of a grouped conv): declines
case("conv2d-batch_groups2", conv((1, 1), "VALID", NHWC, batch_groups=2),
     [(4, 4, 4, 2), (2, 2, 2, 6)], 1, "conv_general_dilated", ("declines",), dtypes=(F64,))

# ---- elementwise ---------------------------------------------------------------------------

ELEM = ("elementwise",)
case("mul-p_lhs", lax.mul, [(3, 4), (3, 4)], 0, "mul", ELEM)
case("mul-p_rhs", lax.mul, [(2, 3, 2), (2, 3, 2)], 1, "mul", ELEM)
case("mul-scalar_other", lax.mul, [(3, 4), ()], 0, "mul", ELEM)
case("mul-scalar_p", lax.mul, [(), (3, 4)], 0, "mul", ELEM, dtypes=(F64,))
case("mul-literal", lambda p: p * 3.0, [(5,)], 0, "mul", ELEM)
# size-1 axes broadcast against the other operand (lax allows it at equal rank: a reshaped bias)
case("mul-size1_other", lax.mul, [(2, 3, 4), (1, 3, 1)], 0, "mul", ELEM)
case("mul-size1_p", lax.mul, [(1, 3, 1), (2, 3, 4)], 0, "mul", ELEM, dtypes=(F64,))
case("div-size1_den", lax.div, [(2, 3), Pos((2, 1))], 0, "div", ELEM, dtypes=(F64,))
case("div-p_num", lax.div, [(3, 4), Pos((3, 4))], 0, "div", ELEM)
case("div-scalar_den", lax.div, [(3, 4), Pos(())], 0, "div", ELEM, dtypes=(F64,))
case("div-scalar_p", lax.div, [(), Pos((3, 4))], 0, "div", ELEM, dtypes=(F64,))
case("div-p_den", lax.div, [(3, 4), Pos((3, 4))], 1, "div", ("declines",), dtypes=(F64,))

IDENT = ("identity",)
case("add-p_lhs", lax.add, [(3, 4), (3, 4)], 0, "add", IDENT)
case("add-p_rhs", lax.add, [(2, 3, 2), (2, 3, 2)], 1, "add", IDENT)
case("add-scalar_p", lax.add, [(), (3, 4)], 0, "add", ("scalar_broadcast",), dtypes=(F64,))
case("add-size1_p-bias", lax.add, [(1, 1, 4), (2, 3, 4)], 0, "add", ("size1_broadcast",))
case("sub-size1_p_rhs", lax.sub, [(2, 3), (2, 1)], 1, "sub", ("size1_broadcast", "negated"),
     dtypes=(F64,))
case("sub-p_lhs", lax.sub, [(3, 4), (3, 4)], 0, "sub", IDENT)
case("sub-p_rhs", lax.sub, [(3, 4), (3, 4)], 1, "sub", ("identity", "negated"))
case("sub-scalar_p_rhs", lax.sub, [(3, 4), ()], 1, "sub", ("scalar_broadcast", "negated"),
     dtypes=(F64,))
case("neg", lax.neg, [(3, 4)], 0, "neg", ("identity", "negated"))
case("neg-3d", lax.neg, [(2, 1, 3)], 0, "neg", ("identity", "negated"), dtypes=(F64,))
case("add_any-p_lhs", lambda a, b: add_any_p.bind(a, b), [(3, 4), (3, 4)], 0, "add_any", IDENT)
case("add_any-p_rhs", lambda a, b: add_any_p.bind(a, b), [(2, 5), (2, 5)], 1, "add_any", IDENT)
case("convert-f32_to_f64", lambda p: lax.convert_element_type(p, F64), [(3, 4)], 0,
     "convert_element_type", IDENT, dtypes=(F32,))
case("convert-f64_to_f32", lambda p: lax.convert_element_type(p, F32), [(3, 4)], 0,
     "convert_element_type", IDENT, dtypes=(F64,))
case("copy", lambda p: lax.copy_p.bind(p), [(3, 4)], 0, "copy", IDENT)
case("reduce_precision-bf16", lambda p: lax.reduce_precision(p, 8, 7), [(3, 4)], 0,
     "reduce_precision", IDENT, dtypes=(F32,))
case("reduce_precision-f64", lambda p: lax.reduce_precision(p, 11, 52), [(2, 3)], 0,
     "reduce_precision", IDENT, dtypes=(F64,))

MASK = ("elementwise", "mask")
BOOL_PRED = Const(np.array([[True, False, True, True], [False, False, True, False],
                            [True, True, False, False]]))
INT_PRED = Const(np.array([[0, 1, 2, 1], [2, 2, 0, 1], [1, 0, 0, 2]], np.int32))
case("select_n-bool-p_case0", lax.select_n, [BOOL_PRED, (3, 4), (3, 4)], 1, "select_n", MASK)
case("select_n-bool-p_case1", lax.select_n, [BOOL_PRED, (3, 4), (3, 4)], 2, "select_n", MASK)
case("select_n-bool_scalar-p_case1", lax.select_n, [Const(np.bool_(True)), (3, 4), (3, 4)], 2,
     "select_n", MASK, dtypes=(F64,))
case("select_n-bool_scalar_false-p_case1", lax.select_n, [Const(np.bool_(False)), (3, 4), (3, 4)],
     2, "select_n", MASK, dtypes=(F64,))
# A literal predicate (`select_n True:bool[] a p`) reaches the rule as a Python bool.
case("select_n-literal_pred-p_case1", lambda a, b: lax.select_n(True, a, b), [(3, 4), (3, 4)], 1,
     "select_n", MASK, dtypes=(F64,))
for _k in (1, 2, 3):
    case(f"select_n-int32-3cases-p_case{_k - 1}", lax.select_n, [INT_PRED, (3, 4), (3, 4), (3, 4)],
         _k, "select_n", MASK)

# ---- structural ------------------------------------------------------------------------------

def bcast(shape, dims):
    return lambda p: lax.broadcast_in_dim(p, shape, dims)


BCAST = ("broadcast",)
case("broadcast-new_lead", bcast((2, 3), (1,)), [(3,)], 0, "broadcast_in_dim", BCAST)
case("broadcast-new_mid", bcast((3, 5, 4), (0, 2)), [(3, 4)], 0, "broadcast_in_dim",
     BCAST, dtypes=(F64,))
case("broadcast-size1_expanded", bcast((3, 4), (0, 1)), [(1, 4)], 0, "broadcast_in_dim", BCAST)
case("broadcast-mixed", bcast((2, 5, 3, 6), (0, 1, 2)), [(2, 1, 3)], 0, "broadcast_in_dim",
     BCAST, dtypes=(F64,))
case("broadcast-scalar", bcast((2, 3), ()), [()], 0, "broadcast_in_dim", BCAST, dtypes=(F64,))
case("broadcast-size1_kept", bcast((1, 4, 2), (0, 1)), [(1, 4)], 0, "broadcast_in_dim", BCAST,
     dtypes=(F64,))

RED = ("reduction",)
case("reduce_sum-one_axis", lambda p: jnp.sum(p, axis=1), [(3, 4, 5)], 0, "reduce_sum", RED)
case("reduce_sum-two_axes", lambda p: jnp.sum(p, axis=(0, 2)), [(3, 4, 5)], 0, "reduce_sum", RED)
case("reduce_sum-all", lambda p: jnp.sum(p), [(3, 4)], 0, "reduce_sum", RED, dtypes=(F64,))

SEL = ("selection",)
case("slice-stride", lambda p: lax.slice(p, (1, 0), (5, 5), (2, 1)), [(6, 5)], 0, "slice", SEL)
case("slice-3d", lambda p: lax.slice(p, (0, 1, 0), (4, 6, 2), (1, 3, 1)), [(4, 6, 3)], 0, "slice",
     SEL, dtypes=(F64,))
case("slice-nostride", lambda p: lax.slice(p, (1, 2), (3, 4)), [(4, 5)], 0, "slice", SEL,
     dtypes=(F64,))
case("slice-full", lambda p: lax.slice(p, (0, 0), (4, 3)), [(4, 3)], 0, "slice",
     ("selection", "no_factors"), dtypes=(F64,))
case("rev-axis0", lambda p: lax.rev(p, (0,)), [(5, 3)], 0, "rev", SEL)
case("rev-two_axes", lambda p: lax.rev(p, (0, 2)), [(2, 3, 4)], 0, "rev", SEL, dtypes=(F64,))


def padf(config):
    return lambda p, v: lax.pad(p, v, config)


case("pad-lo_hi", padf([(1, 2, 0), (0, 0, 0)]), [(3, 4), ()], 0, "pad", SEL)
case("pad-interior", padf([(0, 0, 2), (1, 0, 1)]), [(3, 4), ()], 0, "pad", SEL)
case("pad-negative_lo", padf([(-1, 2, 1), (2, -1, 0)]), [(4, 3), ()], 0, "pad", SEL, dtypes=(F64,))
case("pad-negative_both", padf([(-2, -1, 0)]), [(6,), ()], 0, "pad", SEL, dtypes=(F64,))
case("pad-value_as_p", padf([(1, 1, 0), (0, 2, 1)]), [(3, 4), ()], 1, "pad", ("declines",),
     dtypes=(F64,))


def concat(dim):
    return lambda a, b, c: lax.concatenate([a, b, c], dim)


for _k in range(3):
    case(f"concatenate-axis0-p{_k}", concat(0), [(2, 3), (4, 3), (1, 3)], _k, "concatenate", SEL)
    case(f"concatenate-axis1-p{_k}", concat(1), [(2, 3, 2), (2, 1, 2), (2, 4, 2)], _k,
         "concatenate", SEL, dtypes=(F64,))

case("split-even", lambda p: jnp.split(p, 2), [(4, 3)], 0, "split", SEL)
case("split-uneven_axis1", lambda p: jnp.split(p, [1, 3], axis=1), [(2, 5)], 0, "split",
     SEL, dtypes=(F64,))
case("split-with_empty", lambda p: jnp.split(p, [1, 3], axis=1), [(4, 3)], 0, "split", SEL,
     dtypes=(F64,))

case("dynamic_slice", lambda p, i, j: lax.dynamic_slice(p, (i, j), (2, 3)),
     [(5, 4), i32(1), i32(0)], 0, "dynamic_slice", SEL)
case("dynamic_slice-one_axis", lambda p, i, j: lax.dynamic_slice(p, (i, j), (3, 4)),
     [(5, 4), i32(2), i32(0)], 0, "dynamic_slice", SEL, dtypes=(F64,))
# an out-of-range start is clamped by the primitive: the rule must clamp the same way
case("dynamic_slice-clamped", lambda p, i, j: lax.dynamic_slice(p, (i, j), (2, 3)),
     [(5, 4), i32(7), i32(-3)], 0, "dynamic_slice", SEL, dtypes=(F64,))

def DUS(op, upd, i, j):
    return lax.dynamic_update_slice(op, upd, (i, j))


case("dynamic_update_slice-p_operand", DUS, [(5, 4), (2, 3), i32(1), i32(1)], 0,
     "dynamic_update_slice", MASK)
case("dynamic_update_slice-p_update", DUS, [(5, 4), (2, 3), i32(1), i32(1)], 1,
     "dynamic_update_slice", SEL)
case("dynamic_update_slice-p_update_full_axis", DUS, [(5, 4), (2, 4), i32(3), i32(0)], 1,
     "dynamic_update_slice", SEL, dtypes=(F64,))
case("dynamic_update_slice-clamped-p_operand", DUS, [(5, 4), (2, 3), i32(9), i32(-2)], 0,
     "dynamic_update_slice", MASK, dtypes=(F64,))
case("dynamic_update_slice-clamped-p_update", DUS, [(5, 4), (2, 3), i32(9), i32(-2)], 1,
     "dynamic_update_slice", SEL, dtypes=(F64,))

TRI = ("triangular",)
case("cumsum-jnp-axis0", lambda p: jnp.cumsum(p, axis=0), [(4, 3)], 0, "cumsum", TRI)
case("cumsum-jnp-axis1", lambda p: jnp.cumsum(p, axis=1), [(2, 5)], 0, "cumsum", TRI, dtypes=(F64,))
case("cumsum-reverse", lambda p: lax.cumsum(p, axis=0, reverse=True), [(4, 3)], 0, "cumsum", TRI)
case("cumsum-reverse-axis2", lambda p: lax.cumsum(p, axis=2, reverse=True), [(2, 3, 4)], 0,
     "cumsum", TRI, dtypes=(F64,))

case("squeeze-two", lambda p: lax.squeeze(p, (0, 2)), [(1, 3, 1, 4)], 0, "squeeze", ("squeeze",))
case("squeeze-last", lambda p: lax.squeeze(p, (1,)), [(5, 1)], 0, "squeeze", ("squeeze",),
     dtypes=(F64,))
case("transpose-3d", lambda p: lax.transpose(p, (2, 0, 1)), [(2, 3, 4)], 0, "transpose",
     ("permutation",))
case("transpose-2d", lambda p: lax.transpose(p, (1, 0)), [(3, 5)], 0, "transpose",
     ("permutation",))
case("transpose-4d", lambda p: lax.transpose(p, (1, 3, 0, 2)), [(2, 3, 1, 4)], 0, "transpose",
     ("permutation",), dtypes=(F64,))

# reduce_window_sum (sum and average pooling): per-axis 0/1 window matrices
def pool(window, strides, padding, base_dil=None, win_dil=None):
    return lambda p: lax.reduce_window(p, 0.0, lax.add, window, strides, padding, base_dil, win_dil)


WIN = ("window",)
case("reduce_window_sum-2x2_stride2", pool((1, 2, 2, 1), (1, 2, 2, 1), "VALID"), [(2, 4, 6, 3)], 0,
     "reduce_window_sum", WIN)
case("reduce_window_sum-same", pool((3, 2), (1, 1), "SAME"), [(5, 4)], 0, "reduce_window_sum", WIN)
case("reduce_window_sum-dilated", pool((2, 2), (2, 1), ((1, 0), (0, 2)), (1, 2), (2, 1)), [(6, 3)],
     0, "reduce_window_sum", WIN, dtypes=(F64,))

# gather: row lookups p[ids] (embeddings); other gathers decline and use the dense rule
ROWS = ("onehot",)
IDS_1D = i32(2, 0, 4, 4, -1)  # jnp normalizes the negative index before the gather
case("gather-rows", lambda p, i: p[i], [(5, 3), IDS_1D], 0, "gather", ROWS)
case("gather-rows-2d_ids", lambda p, i: p[i], [(6, 4), Const(np.array([[1, 5, 0], [2, 2, 3]]))],
     0, "gather", ROWS, dtypes=(F64,))
case("gather-rows-3d_p", lambda p, i: p[i], [(4, 2, 3), i32(3, 1)], 0, "gather", ROWS,
     dtypes=(F64,))
case("gather-vector", lambda p, i: p[i], [(7,), i32(6, 0, 3)], 0, "gather", ROWS, dtypes=(F64,))
case("gather-take_clip", lambda p, i: jnp.take(p, i, axis=0, mode="clip"),
     [(5, 3), i32(1, 7, -2)], 0, "gather", ROWS, dtypes=(F64,))
case("gather-take_fill", lambda p, i: jnp.take(p, i, axis=0, mode="fill"),
     [(5, 3), i32(1, 7, -9, 4)], 0, "gather", ROWS, dtypes=(F64,))
case("gather-columns", lambda p, i: jnp.take(p, i, axis=1), [(3, 5), IDS_1D], 0, "gather",
     ("declines",), dtypes=(F64,))
case("gather-points", lambda p, i, j: p[i, j], [(4, 5), i32(0, 3, 1), i32(4, 4, 0)], 0,
     "gather", ("declines",), dtypes=(F64,))

IDS = [c.name for c in CASES]
assert len(set(IDS)) == len(IDS), "duplicate case names"


# --------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------


def _operands(c: Case):
    rng = np.random.default_rng(zlib.crc32(c.name.encode()))
    ops = []
    for s in c.shapes:
        if isinstance(s, Const):
            ops.append(jnp.asarray(s.value))
        elif isinstance(s, Pos):
            ops.append(jnp.asarray(rng.uniform(0.5, 2.0, s.shape), c.dtype))
        else:
            ops.append(jnp.asarray(rng.standard_normal(s), c.dtype))
    return ops


class Result(NamedTuple):
    """Everything a case's checks look at."""

    ops: list  # the operands
    forms: Any  # the rule's forms, with concrete factors (None: the rule declined)
    eqn: Any  # the equation that consumes p
    outs: list  # the equation's outputs
    fn_outs: list  # fn's outputs
    factor_is: list  # per form, per factor: is it one of the operands (by identity)? its index
    jac_fwd: list  # per output: jacfwd of the primitive in p
    jac_rev: list  # per output: jacrev of the primitive in p
    jac_forms: list  # per form: jacfwd of apply_form(form, p)


_RUNS: dict[str, Result] = {}
# pytest-xdist deals the first tests out one by one, alternating workers: a group would then be
# compiled on every worker. There, each case compiles alone.
_XDIST = "PYTEST_XDIST_WORKER" in os.environ


def run(c: Case) -> Result:
    """The case's Result, cached. The first call computes all the cases of the same primitive in
    one compilation (XLA's fixed cost per compilation dominates here); if that fails, each case
    runs alone so that only the failing cases fail."""
    # Every supported JAX (>= 0.9.2) has the split primitive: its absence is a failure.
    assert c.primitive != "split" or getattr(lax, "split_p", None) is not None
    if c.name not in _RUNS:
        group = [g for g in CASES if g.primitive == c.primitive and g.name not in _RUNS]
        if _XDIST:
            group = [c]
        try:
            _RUNS.update(zip((g.name for g in group), _run(group)))
        except Exception:
            for g in group:
                try:
                    (_RUNS[g.name],) = _run([g])
                except Exception as e:  # re-raised by each test of that case
                    _RUNS[g.name] = e
    if isinstance(_RUNS[c.name], Exception):
        raise _RUNS[c.name]
    return _RUNS[c.name]


def _inline_jit(fn):
    # jnp functions such as cumsum and take wrap their primitive in a jit equation: trace through.
    def inlined(*args):
        with jax.disable_jit():
            return fn(*args)

    return inlined


def _traced(c: Case, ops, static):
    """The traced half of a case: the rule's forms, and the Jacobians they are compared with."""
    forms, eqn, outs = rule_forms(_inline_jit(c.fn), ops, c.index)
    static["eqn"], static["forms"] = eqn, forms
    prim = _primitive_in_p(c, ops)
    p0 = ops[c.index]
    fn_outs = prim(p0)
    if forms is None:
        return outs, fn_outs, None, [], [], []
    static["factor_is"] = [
        [next((i for i, o in enumerate(ops) if a is o), None) for a, _ in f.factors]
        for f in forms
    ]
    arrays = [[jnp.asarray(a) for a, _ in f.factors] for f in forms]
    # The rule runs at the default precision, as in the pipeline; the references are computed at
    # full precision (on GPUs the default float32 matmul is TF32, which would round the einsum).
    with jax.default_matmul_precision("highest"):
        jac_forms = [jax.jacfwd(functools.partial(apply_form, f))(p0) for f in forms]
        return outs, fn_outs, arrays, jax.jacfwd(prim)(p0), jax.jacrev(prim)(p0), jac_forms


def _run(cases: list[Case]) -> list[Result]:
    """Runs the rules of ``cases`` and the Jacobians, under one jit. Rules run under jit and vmap
    in the real pipeline too, so this is also the setting they must support."""
    ops = [_operands(c) for c in cases]
    statics = [{} for _ in cases]

    def body(ops):
        return [_traced(c, list(o), s) for c, o, s in zip(cases, ops, statics)]

    results = []
    for c, o, s, out in zip(cases, ops, statics, jax.jit(body)(ops)):
        outs, fn_outs, arrays, jf, jr, ja = out
        forms = s["forms"]
        if forms is not None:
            forms = [dataclasses.replace(f, factors=tuple(zip(a, (l for _, l in f.factors))))
                     for f, a in zip(forms, arrays)]
        results.append(Result(o, forms, s["eqn"], outs, fn_outs, s.get("factor_is"), jf, jr, ja))
    return results


def _primitive_in_p(c: Case, ops):
    def prim(p):
        args = list(ops)
        args[c.index] = p
        out = _inline_jit(c.fn)(*args)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return prim


def _tol(c):
    return dict(rtol=1e-6, atol=1e-6) if c.dtype == F32 else dict(rtol=1e-12, atol=1e-12)


def _as64(a):
    return np.asarray(a, np.float64)


# --------------------------------------------------------------------------------------------
# Tests: every case, and the table itself
# --------------------------------------------------------------------------------------------


# Each check asserts one claim about a case's Result; test_rule runs, for each case, the general
# checks and the case's own claims, each on its own (all of them run, and every failing one is
# reported under its name). One test per case: under pytest-xdist a case runs on one worker only.
CHECKS: dict[str, Callable] = {}


def check(claim):
    def decorate(fn):
        CHECKS[claim] = fn
        return fn

    return decorate


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_rule(c):
    r = run(c)
    if "declines" in c.claims:
        names = ["primitive", "declines"]
    else:
        names = ["primitive", "jacobians", "well_formed", *c.claims]
    failures = []
    for name in names:
        try:
            CHECKS[name](c, r)
        except AssertionError as e:
            failures.append(f"[{name}] {CHECKS[name].__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_every_claim_has_a_check():
    claims = {n for c in CASES for n in c.claims}
    assert claims <= set(CHECKS), claims - set(CHECKS)


# Rules that are another rule, transformed, on a primitive that cannot be bound on its own:
# checked where that primitive is made.
CHECKED_ELSEWHERE = {"guarded": "tests/test_cond_rules.py::test_guarded_rule_masks_the_wrapped_rule"}


def test_every_registered_rule_has_cases():
    """Every built-in rule (defined in ntkc.rules; other tests register their own) has cases."""
    covered = {c.primitive for c in CASES} | set(CHECKED_ELSEWHERE)
    builtin = [p for p, r in registered().items() if r.fn.__module__.startswith("ntkc.rules")]
    missing = sorted(p.name for p in builtin if p.name not in covered)
    assert not missing, f"registered rules without a case in tests/test_rules.py: {missing}"


def test_every_rule_has_a_structure_string():
    for prim, rule in registered().items():
        assert rule.primitive is prim
        assert isinstance(rule.structure, str) and rule.structure, prim.name


@check("primitive")
def check_traces_to_its_primitive(c, r):
    assert r.eqn.primitive.name == c.primitive
    # the consuming equation is the whole function: its outputs are fn's outputs
    assert len(r.fn_outs) == len(r.outs)
    for a, b in zip(r.fn_outs, r.outs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# Checks: the forms reproduce the primitive
# --------------------------------------------------------------------------------------------


@check("jacobians")
def check_forms_match_jacobians(c, r):
    assert len(r.forms) == len(r.outs), "one form per output"
    p_shape = tuple(r.ops[c.index].shape)
    for k, form in enumerate(r.forms):
        want = tuple(r.outs[k].shape) + p_shape
        assert r.jac_fwd[k].shape == want and r.jac_rev[k].shape == want
        ja = r.jac_forms[k]
        # apply_form leaves a broadcast axis (a label on y only) as size 1: broadcast it
        assert ja.ndim == len(want)
        present = set(form.param_labels) | _factor_labels(form)
        for d, l in enumerate(form.out_labels):
            assert ja.shape[d] == want[d] or (ja.shape[d] == 1 and l not in present)
        assert ja.shape[len(form.out_labels):] == p_shape
        ja = np.broadcast_to(_as64(ja), want)
        np.testing.assert_allclose(ja, _as64(r.jac_fwd[k]), **_tol(c))
        np.testing.assert_allclose(ja, _as64(r.jac_rev[k]), **_tol(c))


@check("well_formed")
def check_forms_are_well_formed(c, r):
    """Labels: one per axis of y and of p, consistent sizes, a non-empty structure string."""
    p_shape = tuple(r.ops[c.index].shape)
    for form, y in zip(r.forms, r.outs):
        assert isinstance(form.structure, str) and form.structure
        assert len(form.out_labels) == y.ndim
        assert len(form.param_labels) == len(p_shape)
        assert len(set(form.out_labels)) == len(form.out_labels), "repeated label on y"
        assert len(set(form.param_labels)) == len(form.param_labels), "repeated label on p"
        size = {}
        for labels, shape in [(form.out_labels, y.shape), (form.param_labels, p_shape)] + [
            _labels_and_shape(a, l) for a, l in form.factors
        ]:
            assert len(labels) == len(shape)
            for l, n in zip(labels, shape):
                assert size.setdefault(l, n) == n, f"label {l!r} has sizes {size[l]} and {n}"
        for a, l in form.factors:
            kind = jnp.integer if isinstance(l, OneHot) else jnp.inexact
            assert jnp.issubdtype(jnp.asarray(a).dtype, kind)


def _factor_labels(form) -> set:
    return {l for a, ls in form.factors for l in _labels_and_shape(a, ls)[0]}


def _labels_and_shape(a, labels):
    """A factor's labels and the shape they describe (a OneHot factor's indices gain an axis)."""
    if isinstance(labels, OneHot):
        return labels.labels, tuple(jnp.shape(a)) + (labels.size,)
    return labels, tuple(jnp.shape(a))


@check("declines")
def check_declines(c, r):
    """The rule returns None: the dense rule is used."""
    assert r.forms is None


# --------------------------------------------------------------------------------------------
# Checks: each structural claim on its own
# --------------------------------------------------------------------------------------------


def _only(r):
    assert r.forms is not None and len(r.forms) == 1
    return r.forms[0]


@check("identity")
def check_identity_claim(c, r):
    """y = ±p: the same labels on y and p, and no factor but a -1 for a negated operand."""
    form = _only(r)
    assert form.out_labels == form.param_labels
    if "negated" not in c.claims:
        assert form.factors == ()


@check("scalar_broadcast")
def check_scalar_broadcast_claim(c, r):
    form = _only(r)
    assert form.param_labels == ()
    assert not set(form.out_labels) & _factor_labels(form)
    if "negated" not in c.claims:
        assert form.factors == ()


@check("size1_broadcast")
def check_size1_broadcast_claim(c, r):
    """p's axes of y's size share y's labels; its size-1 axes that broadcast have labels of their
    own, on p only (summed over a single entry), so y's label there is a broadcast."""
    form = _only(r)
    p, y = r.ops[c.index], r.outs[0]
    assert p.ndim == y.ndim
    for a, (n, m) in enumerate(zip(p.shape, y.shape)):
        if n == m:
            assert form.param_labels[a] == form.out_labels[a]
        else:
            assert n == 1
            assert form.param_labels[a] not in form.out_labels
            assert form.out_labels[a] not in set(form.param_labels) | _factor_labels(form)
    if "negated" not in c.claims:
        assert form.factors == ()


@check("negated")
def check_negated_claim(c, r):
    form = _only(r)
    assert len(form.factors) == 1
    (a, labels), = form.factors
    assert labels == () and jnp.shape(a) == ()
    assert float(a) == -1.0


@check("no_factors")
def check_no_factors_claim(c, r):
    assert _only(r).factors == ()


@check("permutation")
def check_transpose_claim(c, r):
    form = _only(r)
    assert form.factors == ()
    perm = r.eqn.params["permutation"]
    assert form.out_labels == tuple(form.param_labels[i] for i in perm)


@check("squeeze")
def check_squeeze_claim(c, r):
    form = _only(r)
    assert form.factors == ()
    dims = r.eqn.params["dimensions"]
    kept = tuple(l for i, l in enumerate(form.param_labels) if i not in dims)
    assert form.out_labels == kept


@check("broadcast")
def check_broadcast_claim(c, r):
    """Kept axes share p's label; new and expanded axes of y are broadcasts (on y only)."""
    form = _only(r)
    assert form.factors == ()
    dims = r.eqn.params["broadcast_dimensions"]
    p_shape, y_shape = r.ops[0].shape, r.outs[0].shape
    for i, d in enumerate(dims):
        if p_shape[i] == y_shape[d]:
            assert form.param_labels[i] == form.out_labels[d]
        else:
            assert p_shape[i] == 1
            assert form.param_labels[i] not in form.out_labels  # summed over a size-1 axis
    fed = {d for i, d in enumerate(dims) if p_shape[i] == y_shape[d]}
    for d, l in enumerate(form.out_labels):
        assert (l in form.param_labels) == (d in fed)


@check("reduction")
def check_reduction_claim(c, r):
    form = _only(r)
    assert form.factors == ()
    axes = r.eqn.params["axes"]
    assert form.out_labels == tuple(l for i, l in enumerate(form.param_labels) if i not in axes)


@check("other_operand")
def check_dot_general_factor_is_the_other_operand(c, r):
    form = _only(r)
    assert len(form.factors) == 1
    (a, labels), = form.factors
    other = r.ops[1 - c.index]
    assert r.factor_is[0] == [1 - c.index], "the factor must be the other operand itself"
    assert len(labels) == other.ndim
    # p's batch axes and free axes are identity (shared with y); contracting axes are summed
    (lc, rc), (lb, rb) = r.eqn.params["dimension_numbers"]
    p_contract, p_batch = (lc, lb) if c.index == 0 else (rc, rb)
    for i, l in enumerate(form.param_labels):
        assert (l in form.out_labels) == (i not in p_contract)
        assert (l in labels) == (i in p_contract or i in p_batch)


@check("patches")
def check_conv_factor_is_the_patches(c, r):
    form = _only(r)
    assert len(form.factors) == 1
    (a, labels), = form.factors
    dn = r.eqn.params["dimension_numbers"]
    x, w, y = r.ops[0], r.ops[1], r.outs[0]
    batch = x.shape[dn.lhs_spec[0]]
    in_channels = x.shape[dn.lhs_spec[1]]
    out_pixels = math.prod(y.shape[d] for d in dn.out_spec[2:])
    filter_size = math.prod(w.shape[d] for d in dn.rhs_spec[2:])
    assert a.size == batch * out_pixels * in_channels * filter_size
    # out features: identity between y and p (not in the factor)
    o_y, o_p = form.out_labels[dn.out_spec[1]], form.param_labels[dn.rhs_spec[0]]
    assert o_y == o_p and o_y not in labels
    # every other axis of p (in channels, filter taps) is contracted with the patches
    for i, l in enumerate(form.param_labels):
        if i != dn.rhs_spec[0]:
            assert l in labels and l not in form.out_labels
    # and it holds the patches JAX's own extractor gives (y's layout, features (C, *filter))
    e = r.eqn.params
    filter_shape = tuple(w.shape[d] for d in dn.rhs_spec[2:])
    ref = lax.conv_general_dilated_patches(
        x, filter_shape, e["window_strides"], e["padding"], e["lhs_dilation"], e["rhs_dilation"], dn)
    feat = dn.out_spec[1]
    ref = ref.reshape(ref.shape[:feat] + (in_channels,) + filter_shape + ref.shape[feat + 1:])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ref))


@check("grouped_patches")
def check_conv_factor_is_the_grouped_patches(c, r):
    """Feature groups: each output feature o gets the patches of its own group's input features:
    one factor of size batch * out_pixels * out_features * in_features_per_group * filter_size."""
    form = _only(r)
    assert len(form.factors) == 1
    (a, labels), = form.factors
    dn = r.eqn.params["dimension_numbers"]
    x, w, y = r.ops[0], r.ops[1], r.outs[0]
    out_pixels = math.prod(y.shape[d] for d in dn.out_spec[2:])
    filter_size = math.prod(w.shape[d] for d in dn.rhs_spec[2:])
    per_group_in = w.shape[dn.rhs_spec[1]]
    assert r.eqn.params["feature_group_count"] * per_group_in == x.shape[dn.lhs_spec[1]]
    n_out = w.shape[dn.rhs_spec[0]]
    assert a.size == x.shape[dn.lhs_spec[0]] * out_pixels * n_out * per_group_in * filter_size
    o = form.param_labels[dn.rhs_spec[0]]
    assert o == form.out_labels[dn.out_spec[1]] and o in labels  # diagonal in out features
    for i, l in enumerate(form.param_labels):
        assert l in labels
        assert (l in form.out_labels) == (i == dn.rhs_spec[0])


@check("conv_input")
def check_conv_input_form(c, r):
    """The input as p: per spatial axis i a 0/1 tensor S[s, k, j] (output pixel s reads input pixel
    j through tap k), size out_i * taps_i * in_i; then the kernel (itself when there are no
    groups; block-diagonal over all input features when there are). The batch axis is identity."""
    form = _only(r)
    dn = r.eqn.params["dimension_numbers"]
    x, w, y = r.ops[0], r.ops[1], r.outs[0]
    spatial = len(dn.lhs_spec) - 2
    assert len(form.factors) == spatial + 1
    for i, (s, labels) in enumerate(form.factors[:spatial]):
        assert s.shape == (y.shape[dn.out_spec[2 + i]], w.shape[dn.rhs_spec[2 + i]],
                           x.shape[dn.lhs_spec[2 + i]])
        assert _is01(s)
        ls, lk, lj = labels
        assert ls == form.out_labels[dn.out_spec[2 + i]] and ls not in form.param_labels
        assert lj == form.param_labels[dn.lhs_spec[2 + i]] and lj not in form.out_labels
        assert lk not in form.out_labels and lk not in form.param_labels
        assert np.all(np.asarray(s).sum(axis=2) <= 1), "a tap reads one input pixel (or padding)"
    kernel, labels = form.factors[-1]
    groups = r.eqn.params["feature_group_count"]
    if groups == 1:
        assert r.factor_is[0][-1] == 1, "the kernel factor must be the kernel itself"
    else:
        assert kernel.size == w.size * groups
    n = form.param_labels[dn.lhs_spec[0]]
    assert n == form.out_labels[dn.out_spec[0]]
    assert all(n not in ls for _, ls in form.factors)


@check("elementwise")
def check_elementwise_factors_have_y_shape_or_are_scalars(c, r):
    form = _only(r)
    y = r.outs[0]
    assert form.factors
    for a, labels in form.factors:
        if jnp.ndim(a) == 0:
            assert labels == ()
        else:  # y's shape, up to size-1 axes that broadcast (labels of their own, not on y)
            assert jnp.ndim(a) == y.ndim
            for d, (n, l) in enumerate(zip(jnp.shape(a), labels)):
                assert (l == form.out_labels[d]) if n == y.shape[d] else (n == 1 and
                                                                          l not in form.out_labels)
    # diagonal: p shares y's labels (up to size-1 broadcast axes), or is a scalar broadcast over y
    p = r.ops[c.index]
    if p.ndim == 0:
        assert form.param_labels == ()
    else:
        for d, (n, l) in enumerate(zip(p.shape, form.param_labels)):
            assert (l == form.out_labels[d]) if n == y.shape[d] else l not in form.out_labels


def _is01(a):
    a = np.asarray(a)
    return bool(np.all((a == 0) | (a == 1)))


@check("mask")
def check_mask_claim(c, r):
    """A 0/1 mask of y's shape (or a 0/1 scalar): keeps or drops each entry."""
    for a, _ in _only(r).factors:
        assert _is01(a)


def _y_by_p(form, a, labels):
    """A separable factor as a (y axis, p axis) matrix."""
    assert len(labels) == 2
    ly, lp = labels
    if ly in form.param_labels:
        ly, lp = lp, ly
        a = np.asarray(a).T
    assert ly in form.out_labels and ly not in form.param_labels
    assert lp in form.param_labels and lp not in form.out_labels
    return np.asarray(a)


@check("selection")
def check_selection_claim(c, r):
    """Separable: per axis either identity (a shared label) or a 0/1 matrix with at most one 1 per
    row (each y entry is one p entry or zero) and per column (each p entry goes to one place)."""
    for form, y in zip(r.forms, r.outs):
        p = r.ops[c.index]
        for a, labels in form.factors:
            m = _y_by_p(form, a, labels)
            assert _is01(m)
            assert np.all(m.sum(axis=1) <= 1), "a row with several ones"
            assert np.all(m.sum(axis=0) <= 1), "a column with several ones"
        # the axes with no factor are identity
        factor_labels = _factor_labels(form)
        for d, l in enumerate(form.out_labels):
            if l not in factor_labels:
                i = form.param_labels.index(l)
                assert y.shape[d] == p.shape[i]


@check("triangular")
def check_cumsum_claim(c, r):
    form = _only(r)
    assert len(form.factors) == 1
    m = _y_by_p(form, *form.factors[0])
    want = np.tril(np.ones(m.shape)) if not r.eqn.params["reverse"] else np.triu(np.ones(m.shape))
    np.testing.assert_array_equal(m, want)
    axis = r.eqn.params["axis"]
    shared = [l for l in form.out_labels if l in form.param_labels]
    assert len(shared) == r.outs[0].ndim - 1 and form.out_labels[axis] not in shared


@check("onehot")
def check_gather_claim(c, r):
    """Row lookup: one factor of integer indices, one-hot over p's first axis (never built as a
    matrix); p's other axes are identity. Out-of-range indices select nothing (index == size)."""
    form = _only(r)
    assert len(form.factors) == 1
    ((ids, onehot),) = form.factors
    p = r.ops[c.index]
    assert isinstance(onehot, OneHot)
    assert onehot.size == p.shape[0]
    assert onehot.labels[-1] == form.param_labels[0] not in form.out_labels
    assert tuple(onehot.labels[:-1]) == tuple(form.out_labels[: ids.ndim])
    assert jnp.issubdtype(ids.dtype, jnp.integer)
    assert np.all((np.asarray(ids) >= 0) & (np.asarray(ids) <= p.shape[0]))
    assert tuple(form.out_labels[ids.ndim:]) == tuple(form.param_labels[1:])


@check("window")
def check_window_claim(c, r):
    """Separable: per pooled axis a 0/1 (y, p) matrix with at most window-size ones per row."""
    form = _only(r)
    window = r.eqn.params["window_dimensions"]
    for a, labels in form.factors:
        m = _y_by_p(form, a, labels)
        assert _is01(m)
        axis = form.out_labels.index(next(l for l in labels if l in form.out_labels))
        assert np.all(m.sum(axis=1) <= window[axis])
        assert m.shape == (r.outs[0].shape[axis], r.ops[0].shape[axis])
    factor_labels = _factor_labels(form)
    for d, l in enumerate(form.out_labels):
        if l not in factor_labels:  # an axis the window does not touch: identity
            assert form.param_labels[d] == l


# --------------------------------------------------------------------------------------------
# The dense fallback
# --------------------------------------------------------------------------------------------


def _consuming_eqn(fn, operands, index):
    """The equation of ``fn``'s jaxpr that consumes ``operands[index]``, with its arguments."""
    return consuming_equation(_inline_jit(fn), operands, index)


IDX = np.array([2, 0, 3, 3], np.int32)
# dense_forms on equations the structured rules do not cover: primitives with no rule ("none"),
# and equations whose rule declines ("declines"): gathers other than row lookups, a conv with
# batch groups. It works on any equation ("any"): a multi-output one gets one form per output.
DENSE_CASES = [
    ("scatter_add-p_updates", lambda x, u, i: x.at[i].add(u), [(5, 3), (4, 3), Const(IDX)], 1,
     "scatter-add", "none"),
    ("scatter_add-p_operand", lambda x, u, i: x.at[i].add(u), [(5, 3), (4, 3), Const(IDX)], 0,
     "scatter-add", "none"),
    ("triangular_solve-p_rhs",
     lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True, lower=True),
     [Const(np.tril(np.ones((3, 3))) + 2 * np.eye(3)), (3, 2)], 1, "triangular_solve", "none"),
    ("gather-points", lambda x, i, j: x[i, j], [(5, 3), Const(IDX), Const(IDX % 3)], 0, "gather",
     "declines"),
    ("gather-take_axis1", lambda x, i: jnp.take(x, i, axis=1), [(3, 5), Const(IDX)], 0, "gather",
     "declines"),
    ("conv-batch_groups2", conv((1, 1), "VALID", NHWC, batch_groups=2),
     [(4, 3, 3, 2), (2, 2, 2, 4)], 1, "conv_general_dilated", "declines"),
    ("split-multi_output", lambda x: jnp.split(x, [1], axis=0), [(3, 2)], 0, "split", "any"),
]


@pytest.mark.parametrize("name,fn,shapes,index,primitive,kind", DENSE_CASES,
                         ids=[d[0] for d in DENSE_CASES])
def test_dense_fallback(name, fn, shapes, index, primitive, kind):
    """``dense_forms``: one factor per output, the Jacobian ``(*y, *p)`` itself (jacfwd of the
    equation), labelled y's labels then p's; it reproduces jacfwd and jacrev of the primitive."""
    c = Case(name, fn, tuple(shapes), index, F64, primitive)
    ops = _operands(c)
    static = {}

    def body(*ops):
        ops = list(ops)
        eqn, args, pos = _consuming_eqn(fn, ops, index)
        known = [None if i == pos else a for i, a in enumerate(args)]
        forms = dense_forms(eqn, known, pos, eqn.invars[pos].aval)
        static["eqn"], static["forms"] = eqn, forms
        prim = _primitive_in_p(c, ops)
        p0 = ops[index]
        with jax.default_matmul_precision("highest"):
            jac_forms = [jax.jacfwd(functools.partial(apply_form, f))(p0) for f in forms]
            jf, jr = jax.jacfwd(prim)(p0), jax.jacrev(prim)(p0)
        return [f.arrays for f in forms], jac_forms, jf, jr

    arrays, jac_forms, jf, jr = jax.jit(body)(*ops)
    eqn, forms = static["eqn"], static["forms"]
    assert eqn.primitive.name == primitive
    if kind == "none":
        assert lookup(eqn.primitive) is None
        with pytest.raises(LookupError):
            rule_forms(_inline_jit(fn), ops, index)
    elif kind == "declines":
        assert rule_forms(_inline_jit(fn), ops, index)[0] is None
    assert len(forms) == len(jf) == len(jr) == len(eqn.outvars)
    for form, (d,), ja, j, jrev in zip(forms, arrays, jac_forms, jf, jr):
        assert form.structure == "dense"
        ((_, labels),) = form.factors
        assert d.shape == j.shape and labels == form.out_labels + form.param_labels
        np.testing.assert_allclose(np.asarray(d), np.asarray(j), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(d), np.asarray(jrev), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(ja), np.asarray(j), rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    # Each case compiles a handful of tiny programs: XLA's optimizations cost more than they save.
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
