"""A property test of the API (hypothesis): random small models and random API options, every
method against the float64 reference ``ntkc.testing.reference_ntk``.

tests/test_random_architectures.py draws chains of dense-width primitives under
``method="structured"`` with the default axes; this file draws what that one holds fixed: spatial
ranks 0-2 with conv1d/conv2d (strided, depthwise), normalisations without parameters of their own
or with a gain, reshapes and transposes, nested pytree params with a weight shared between layers,
a dict input and pytree outputs, keyword arguments, the batch axis at any position, ``trace_axes``
and ``diagonal_axes`` (disjoint, positive or negative), the three forms of ``vmap_axes``, ``x2``
None or given, and every method.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import ntkc
from ntkc.testing import reference_ntk

C = 3  # the width of every hidden layer
S = 3  # the size of every spatial axis of the input
METHODS = ["auto", "structured", "jacobian", "ntvp"]
FORMS = ["none", "int", "triple"]  # of vmap_axes: None, an int, (in_axes, out_axes, kwargs_axes)
LAYERS = ["dense", "dense_shared", "conv", "conv_depthwise", "tanh", "sin", "relu", "bias",
          "rms_gain", "center", "l2_spatial", "transpose", "reshape_scale", "batch_mix"]
# batch_mix lets examples interact: its models are drawn with vmap_axes=None


def build(spec, rng):
    """``(f, params, x1, x2, kwargs)`` for a drawn spec; the shapes are followed as layers are
    added, so each layer's parameters fit what it receives."""
    r, layers, b_in, b_out = spec["rank"], spec["layers"], spec["b_in"], spec["b_out"]
    normal = lambda *shape: rng.standard_normal(shape) / np.sqrt(max(shape[0], 1) if shape else 1)
    params = {"layers": [], "shared": normal(C, C), "head": (normal(C, spec["out"]),)}
    shape = (S,) * r + (C,)  # per example, the batch axis first
    ops = []
    for kind in layers:
        leaf = {}
        if kind == "conv" and r:
            stride = int(rng.integers(1, 3))
            leaf["k"] = normal(*(2,) * r, C, C)
            ops.append(("conv", stride, 1))
            shape = tuple(-(-s // stride) for s in shape[:-1]) + (C,)
        elif kind == "conv_depthwise" and r:
            leaf["k"] = normal(*(2,) * r, 1, C)
            ops.append(("conv", 1, C))
        elif kind in ("conv", "conv_depthwise"):  # no spatial axes: a dense layer instead
            leaf["w"] = normal(C, C)
            ops.append(("dense",))
        elif kind == "dense":
            leaf["w"] = normal(C, C)
            ops.append(("dense",))
        elif kind == "bias":
            leaf["b"] = rng.standard_normal(C)
            ops.append(("bias",))
        elif kind == "rms_gain":
            leaf["g"] = rng.uniform(0.5, 1.5, C)
            ops.append(("rms_gain",))
        elif kind == "reshape_scale":
            leaf["s"] = rng.uniform(0.5, 1.5, int(np.prod(shape)))
            ops.append(("reshape_scale",))
        elif kind == "transpose":
            ops.append(("transpose", r >= 2, r == 1 and shape[0] == C))
        else:
            ops.append((kind,))
        params["layers"].append(leaf)

    def f(p, x, temperature=None):
        h = jnp.moveaxis(x["img"], b_in, 0)
        side = jnp.moveaxis(x["side"], b_in, 0)
        h = h + (side @ p["shared"]).reshape((h.shape[0],) + (1,) * r + (C,))
        for op, leaf in zip(ops, p["layers"]):
            kind = op[0]
            if kind == "dense":
                h = h @ leaf["w"]
            elif kind == "dense_shared":
                h = h @ p["shared"].T
            elif kind == "conv":
                spatial = "HW"[:r] if r == 2 else "W"
                dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
                h = lax.conv_general_dilated(h, leaf["k"], (op[1],) * r, "SAME",
                                             dimension_numbers=dn, feature_group_count=op[2])
            elif kind == "tanh":
                h = jnp.tanh(h)
            elif kind == "sin":
                h = jnp.sin(h)
            elif kind == "relu":
                h = jax.nn.relu(h)
            elif kind == "bias":
                h = h + leaf["b"].reshape((1,) * (h.ndim - 1) + (C,))
            elif kind == "rms_gain":
                h = h * lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 0.5) * leaf["g"].reshape(
                    (1,) * (h.ndim - 1) + (C,))
            elif kind == "center":
                h = h - jnp.mean(h, -1, keepdims=True)
            elif kind == "l2_spatial":
                axes = tuple(range(1, h.ndim - 1))
                h = h / jnp.sqrt(jnp.sum(h * h, axes, keepdims=True) + 1.0)
            elif kind == "transpose":
                if op[1]:
                    h = jnp.swapaxes(h, 1, 2)  # two spatial axes
                elif op[2]:
                    h = jnp.swapaxes(h, 1, 2)  # the spatial axis and the features (both C)
                else:
                    h = h[..., ::-1]
            elif kind == "reshape_scale":
                n = h.shape[0]
                h = (h.reshape(n, -1) * leaf["s"][None, :]).reshape(h.shape)
            elif kind == "batch_mix":
                h = h + jnp.tanh(jnp.mean(h, 0, keepdims=True))
        out = h @ p["head"][0]
        if temperature is not None:
            out = out / temperature
        out = jnp.moveaxis(out, 0, b_out)
        if spec["pytree_out"]:
            return {"a": out, "b": [jnp.sin(out) * 2]}
        return out

    n1, n2 = spec["n1"], spec["n2"]

    def inputs(n):
        img = rng.standard_normal((n,) + (S,) * r + (C,))
        return {"img": np.moveaxis(img, 0, b_in), "side": np.moveaxis(rng.standard_normal((n, C)), 0, b_in)}

    kwargs = {"temperature": jnp.asarray(1.5)} if spec["kwarg"] else {}
    return f, params, inputs(n1), (None if n2 is None else inputs(n2)), kwargs


def rotate(choices, k):
    """``choices`` starting at ``k``: hypothesis favours the first choices, so each parametrized
    run (``k``) starts its stream of examples elsewhere in the space."""
    k %= len(choices)
    return list(choices[k:]) + list(choices[:k])


@st.composite
def specs(draw, method, vmap_form, k=0):
    pick = lambda choices, shift=1: draw(st.sampled_from(rotate(choices, k * shift)))
    rank = pick([0, 1, 2])
    out_rank = rank + 2  # (N, spatial..., out)
    # examples that interact (batch_mix) only with vmap_axes=None
    kinds = rotate([l for l in LAYERS if vmap_form == "none" or l != "batch_mix"], 5 * k)
    layers = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3))
    pytree_out = pick([False, True])
    kwarg = pick([True, False])
    b_in = pick([0, 1, -1], 2)
    b_out = b_in if vmap_form == "int" else pick([-1, 0, 1])  # int: the same axis for both
    if vmap_form == "int":
        vmap_axes = b_in  # inputs and outputs have the same rank (rank + 2)
    elif vmap_form == "triple":
        out_axes = {"a": b_out, "b": [b_out]} if pytree_out and pick([True, False]) else b_out
        kwargs_axes = {"temperature": None} if kwarg else {}
        vmap_axes = ({"img": b_in, "side": b_in}, out_axes, kwargs_axes)
    else:
        vmap_axes = None
    # axes of the output: disjoint trace and diagonal, each written positive or negative
    roles = [pick(["keep", "trace", "diag"], a + 1) for a in range(out_rank)]
    write = lambda a: pick([a - out_rank, a], a + 2)
    trace_axes = tuple(write(a) for a, role in enumerate(roles) if role == "trace")
    diagonal_axes = tuple(write(a) for a, role in enumerate(roles) if role == "diag")
    n1 = pick([2, 1, 3])
    same_n = roles[b_out % out_rank] != "keep"  # a traced or diagonal batch axis needs N1 == N2
    n2 = pick([None, n1] if same_n else [None, 1, 2])
    return dict(rank=rank, layers=layers, b_in=b_in, b_out=b_out, pytree_out=pytree_out,
                kwarg=kwarg, vmap_axes=vmap_axes, trace_axes=trace_axes,
                diagonal_axes=diagonal_axes, n1=n1, n2=n2, out=pick([2, 1]), method=method,
                seed=draw(st.integers(0, 2**16)) + 1000 * k)


def check(spec):
    f, params, x1, x2, kwargs = build(spec, np.random.default_rng(spec["seed"]))
    options = dict(trace_axes=spec["trace_axes"], diagonal_axes=spec["diagonal_axes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dense fallbacks are reported; they must still be right
        theta = ntkc.ntk_fn(f, vmap_axes=spec["vmap_axes"], method=spec["method"], **options)(
            x1, x2, params, **kwargs)
    reference = reference_ntk(f, x1, x2, params, **options, **kwargs)
    assert jax.tree.structure(theta) == jax.tree.structure(reference)
    for got, want in zip(jax.tree.leaves(theta), jax.tree.leaves(reference)):
        assert got.shape == want.shape, (got.shape, want.shape)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("vmap_form", FORMS)
@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_model_and_options_match_the_reference(method, vmap_form, data):
    """The method and the form of vmap_axes are parametrized, so that each pair gets examples
    (drawn freely, hypothesis favours the first choices); hypothesis draws the rest."""
    k = 3 * METHODS.index(method) + FORMS.index(vmap_form)
    check(data.draw(specs(method, vmap_form, k), label="spec"))


@pytest.mark.parametrize("vmap_axes, b_out", [
    (None, -2), pytest.param(1, 1, marks=pytest.mark.quick),
    (({"img": 1, "side": 1}, {"a": -2, "b": [-2]}, {"temperature": None}), -2)])
def test_fixed_case_of_each_vmap_form(vmap_axes, b_out):
    """One fixed case per vmap_axes form (a conv1d, a gain, the batch axis moved, a pytree output,
    a keyword argument, the batch axis diagonal), so these run without hypothesis too."""
    check(dict(rank=1, layers=["conv", "rms_gain", "tanh"], b_in=1, b_out=b_out, pytree_out=True,
               kwarg=True, vmap_axes=vmap_axes, trace_axes=(-1,), diagonal_axes=(b_out,), n1=2,
               n2=None, out=2, method="structured", seed=0))
