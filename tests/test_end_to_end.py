"""End to end: every method on the model zoo against the float64 reference NTK.

Each test builds ``ntkc.ntk_fn(...)`` (one XLA compilation per call signature, the dominant cost on
CPU) and compares it with :func:`ntkc.testing.reference_ntk`, an independent full-Jacobian oracle.

Grid (trace_axes x diagonal_axes x vmap_axes in {None, int} x x2 in {None, given}):
- ``mlp`` (output (N, O)) and ``attention`` (output (N, T, O)): a covering design by default
  (every trace/diagonal combination with every method and with every vmap/x2 combination, every
  method with every vmap/x2 combination), the full product with ``NTKC_FULL_GRID=1`` (slow: one
  compilation per case);
- a few representative combinations on each other model of the zoo.
Axes are written in positive and negative forms alternately. x2 has 2 examples against x1's 3,
except where the batch axis is traced or diagonal: there it is None or another input of 3.

Adding a method: append it to ``models.METHODS_UNDER_TEST``; it joins the covering designs and
runs cases ``a`` and ``b`` of ``other_model_cases``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import numpy as np
import pytest

import ntkc
from ntkc.testing import reference_ntk

import models
from grids import FULL_GRID
from models import METHODS_UNDER_TEST, MODELS

RTOL, ATOL = 1e-6, 1e-8


# ----------------------------------------------------------------------------- helpers


@functools.cache
def jitted(model):
    """``jax.jit`` of a zoo model's f, for the reference: its Jacobians then cost a few cached
    compilations per input shape instead of one eager compilation per primitive and shape."""
    return jax.jit(MODELS[model]()[0])


def assert_tree_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a = np.asarray(a)
        assert a.shape == e.shape, (a.shape, e.shape)
        assert a.dtype == np.float64, a.dtype
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


def same_size_x2(x1):
    """A second input with x1's shapes but other values (for traced/diagonal batch axes)."""
    return jax.tree.map(lambda a: 0.8 * a[::-1] + 0.1, x1)


def pick_x2(x1, x2, mode):
    """x2 for an x2 mode: "none" -> None, "diff" -> the model's x2, "same" -> x1's size."""
    if mode == "same":
        return same_size_x2(x1)
    return {"none": None, "diff": x2}[mode]


def form(axes, ndim, negative):
    """Canonical non-negative ``axes`` written in negative (``a - ndim``) or positive form."""
    return tuple(a - ndim if negative else a for a in axes)


def two_sided_reference(f, x1, x2, params, trace_axes, diagonal_axes, kwargs1, kwargs2):
    """The reference NTK where f(x1) gets ``kwargs1`` and f(x2) gets ``kwargs2``
    (``x2=None``: ``kwargs1`` on both sides). Each input is tagged with its side (a Python int
    leaf, which the reference leaves alone), so that ``reference_ntk`` stays the oracle."""

    def f_ref(p, tagged):
        x, side = tagged
        return f(p, x, **(kwargs1 if side == 1 else kwargs2))

    return reference_ntk(f_ref, (x1, 1), None if x2 is None else (x2, 2), params,
                         trace_axes, diagonal_axes)


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    method: str
    trace: tuple
    diagonal: tuple
    vmap: int | None
    x2: str  # "none" | "diff" (2 examples vs 3) | "same" (3 examples, other values)

    def __str__(self):
        return (f"{self.model}-{self.method}-tr{list(self.trace)}-dg{list(self.diagonal)}"
                f"-vmap{self.vmap}-x2{self.x2}")


def x2_modes(trace, diagonal):
    # A traced or diagonal batch axis needs the same number of examples on both sides.
    return ("none", "same") if 0 in trace + diagonal else ("none", "diff")


def full_grid(model, ndim, specs, methods):
    """Every spec x vmap x x2 mode x method; the axis form alternates so that both forms meet
    every vmap and x2 value. The int vmap axis is -ndim in the negative-form rows (the models
    used here have inputs and outputs of equal rank)."""
    for method in methods:
        for trace, diagonal in specs:
            for vmap in (None, 0):
                for mode in x2_modes(trace, diagonal):
                    neg = (vmap is None) != (mode == "none")
                    yield Case(model, method, form(trace, ndim, neg), form(diagonal, ndim, neg),
                               None if vmap is None else (-ndim if neg else 0), mode)


def covering_grid(model, ndim, specs, methods):
    """Each spec with each method once, cycling through the 4 vmap x x2 combinations: with 3
    methods each spec meets 3 of them, and each method meets all 4 (given 4 specs or more)."""
    for s, (trace, diagonal) in enumerate(specs):
        for m, method in enumerate(methods):
            k = (s + m) % 4
            vmap = (None, 0)[k % 2]
            mode = x2_modes(trace, diagonal)[k // 2]
            neg = k in (1, 2)
            yield Case(model, method, form(trace, ndim, neg), form(diagonal, ndim, neg),
                       None if vmap is None else (-ndim if neg else 0), mode)


# Output (N, O): canonical (trace, diagonal) specs.
SPECS_2D = [
    ((1,), ()),
    ((), ()),
    ((), (0,)),
    ((1,), (0,)),
    ((0,), ()),
    ((0,), (1,)),
    ((0, 1), ()),
]
# Output (N, T, O).
SPECS_3D = [
    ((2,), ()),
    ((2,), (0,)),
    ((2,), (1,)),
    ((), ()),
    ((), (0,)),
    ((), (1,)),
    ((0,), ()),
    ((0,), (1,)),
]

GRID = full_grid if FULL_GRID else covering_grid
MLP_CASES = list(GRID("mlp", 2, SPECS_2D, METHODS_UNDER_TEST))
ATTENTION_CASES = list(GRID("attention", 3, SPECS_3D, METHODS_UNDER_TEST))


def other_model_cases():
    """A few representative combinations on the rest of the zoo."""
    # (trace, diagonal, vmap, x2), and which methods run which (a new method runs a and b).
    a = ((-1,), (), None, "diff")
    b = ((), (0,), 0, "none")
    c = ((0,), (), 0, "same")
    plan = {"jacobian": [a], "ntvp": [b], "auto": [c]}
    for model in MODELS:
        if model in ("mlp", "attention"):
            continue
        for method in METHODS_UNDER_TEST:
            for trace, diagonal, vmap, mode in plan.get(method, [a, b]):
                yield Case(model, method, trace, diagonal, vmap, mode)
    # A diagonal non-batch axis on both leaves of a pytree output: (N, 3) and (N, 2, 2).
    yield Case("pytree_output", "jacobian", (), (1,), 0, "diff")
    yield Case("pytree_output", "ntvp", (-1,), (-2,), None, "none")
    yield Case("pytree_output", "ntvp", (), (1,), 0, "diff")


# A handful of the fastest plain-JAX cases (CI runs these on the oldest JAX): on mlp,
# (method, canonical trace, canonical diagonal, vmap is None, x2 mode).
QUICK = {
    ("jacobian", (1,), (), True, "none"),
    ("ntvp", (), (), True, "diff"),
    ("jacobian", (), (0,), True, "same"),
    ("ntvp", (1,), (0,), True, "none"),
    ("auto", (1,), (), False, "diff"),
    ("ntvp", (0,), (), False, "none"),
}


def is_quick(case):
    canon = lambda axes: tuple(a % 2 for a in axes)
    key = (case.method, canon(case.trace), canon(case.diagonal), case.vmap is None, case.x2)
    return case.model == "mlp" and key in QUICK


ALL_CASES = MLP_CASES + ATTENTION_CASES + list(other_model_cases())
assert sum(map(is_quick, ALL_CASES)) == len(QUICK)


def _param(case):
    return pytest.param(case, id=str(case),
                        marks=[pytest.mark.quick] if is_quick(case) else [])


@pytest.mark.parametrize("case", [_param(c) for c in ALL_CASES])
def test_matches_reference(case):
    f, params, x1, x2 = MODELS[case.model]()
    x2 = pick_x2(x1, x2, case.x2)
    kernel_fn = ntkc.ntk_fn(f, case.trace, case.diagonal, case.vmap, method=case.method)
    got = kernel_fn(x1, x2, params)
    want = reference_ntk(jitted(case.model), x1, x2, params, case.trace, case.diagonal)
    assert_tree_close(got, want)


# ----------------------------------------------------------------------------- layout pins

N1, N2, T = models.N1, models.N2, models.T

# (model, x2 mode, trace, diagonal, expected kernel shape(s)) in neural-tangents' layout.
LAYOUTS = [
    ("mlp", "diff", (-1,), (), (N1, N2)),
    ("mlp", "diff", -1, (), (N1, N2)),  # an int is accepted for a single axis
    ("mlp", "diff", (), (), (N1, N2, 3, 3)),
    ("mlp", "none", (), (0,), (N1, 3, 3)),
    ("mlp", "none", (-1,), (0,), (N1,)),
    ("mlp", "same", (0,), (), (3, 3)),
    ("mlp", "same", (0, -1), (), ()),
    ("attention", "diff", (-1,), (1,), (N1, N2, T)),
    ("attention", "diff", (-1,), (), (N1, N2, T, T)),
    ("attention", "diff", (), (), (N1, N2, T, T, 3, 3)),
    ("attention", "none", (), (0, 1), (N1, T, 3, 3)),
    ("attention", "diff", (), (-2,), (N1, N2, T, 3, 3)),
    ("attention", "same", (0, 2), (), (T, T)),
    ("pytree_output", "diff", (-1,), (), {"logits": (N1, N2), "grid": (N1, N2, 2, 2)}),
    ("pytree_output", "none", (), (0,), {"logits": (N1, 3, 3), "grid": (N1, 2, 2, 2, 2)}),
]


@pytest.mark.quick
@pytest.mark.parametrize("model,mode,trace,diagonal,expected", LAYOUTS,
                         ids=[f"{m}-{x}-tr{t}-dg{d}" for m, x, t, d, _ in LAYOUTS])
def test_layout(model, mode, trace, diagonal, expected):
    """Kernel shapes pinned to neural-tangents' layout, for the reference and for each ntkc
    method (traced only: no compilation)."""
    f, params, x1, x2 = MODELS[model]()
    x2 = pick_x2(x1, x2, mode)
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
    assert shapes(reference_ntk(jitted(model), x1, x2, params, trace, diagonal)) == expected
    for method in METHODS_UNDER_TEST:
        for vmap in (None, 0):
            kernel_fn = ntkc.ntk_fn(f, trace, diagonal, vmap, method=method)
            assert shapes(jax.eval_shape(lambda: kernel_fn(x1, x2, params))) == expected, (
                method, vmap)


# ----------------------------------------------------------------------------- vmap_axes triple


TRIPLE_OPTIONS = {
    "none": ((-1,), ()),  # the (2, N) leaf's batch axis is traced
    "diff": ((), ()),
    "same": ((), (0,)),  # diagonal: the batch axis of (N, 3), the non-batch axis of (2, N)
}


@pytest.mark.parametrize("method,mode", [
    pytest.param(m, x, marks=[pytest.mark.quick] if (m, x) == ("ntvp", "diff") else [])
    for m in METHODS_UNDER_TEST for x in TRIPLE_OPTIONS
    if m != "auto" or x == "diff"  # auto runs one of the others: one case is enough
])
def test_vmap_axes_triple(method, mode):
    """Pytree input {'a': (N, 4), 'b': (5, N)} with batch axes {'a': 0, 'b': 1}, a keyword
    argument ``w`` batched through kwargs_axes, outputs ((N, 3), (2, N)) with out_axes (0, 1)."""
    trace, diagonal = TRIPLE_OPTIONS[mode]
    f, params, x1, x2 = models.pytree_input()
    w1, w2 = models.pytree_input_weights()
    if mode == "none":
        x2, kw1, kw2, w = None, {"w": w1}, {"w": w1}, w1
    elif mode == "diff":
        kw1, kw2, w = {"w": w1}, {"w": w2}, (w1, w2)  # a tuple of two: one item per side
    else:
        x2 = same_size_x2(x1)
        kw1, kw2, w = {"w": w1}, {"w": w1[::-1]}, (w1, w1[::-1])
    vmap_axes = models.PYTREE_INPUT_VMAP_AXES
    if (method, mode) in {("jacobian", "same"), ("ntvp", "none")}:
        vmap_axes = ({"a": -2, "b": -1}, (-2, -1), {"w": -1})  # the same, in negative form
    kernel_fn = ntkc.ntk_fn(f, trace, diagonal, vmap_axes, method=method)
    got = kernel_fn(x1, x2, params, w=w)
    want = two_sided_reference(f, x1, x2, params, trace, diagonal, kw1, kw2)
    assert_tree_close(got, want)


# ----------------------------------------------------------------------------- kwargs


@pytest.mark.parametrize("method,vmap", [
    pytest.param(m, v, marks=[pytest.mark.quick] if m == "jacobian" else [])
    for m, v in zip(METHODS_UNDER_TEST, itertools.cycle([None, 0]))
])
def test_static_kwargs(method, vmap):
    """Non-array keyword arguments reach f unchanged on both sides."""
    f, params, x1, x2 = models.mlp_kwargs()
    kwargs = {"scale": 2.0, "train": True}
    got = ntkc.ntk_fn(f, (), (), vmap, method=method)(x1, x2, params, **kwargs)
    want = reference_ntk(f, x1, x2, params, (), (), **kwargs)
    assert_tree_close(got, want)


@pytest.mark.quick
def test_static_kwargs_are_part_of_the_cache_key():
    """The kernel is quadratic in the output scale: a cached compilation for scale=2 must not be
    reused for scale=3."""
    f, params, x1, x2 = models.mlp_kwargs()
    kernel_fn = ntkc.ntk_fn(f, method="ntvp")
    k2 = kernel_fn(x1, x2, params, scale=2.0)
    k3 = kernel_fn(x1, x2, params, scale=3.0)
    np.testing.assert_allclose(np.asarray(k3), np.asarray(k2) * 9 / 4, rtol=RTOL, atol=ATOL)
    assert_tree_close(k2, reference_ntk(f, x1, x2, params, scale=2.0))


def _rng_cases():
    yield "jacobian", None, "none", "raw"
    yield "jacobian", 0, "diff", "raw"
    yield "jacobian", 0, "equal", "raw"
    yield "ntvp", None, "diff", "raw"
    yield "ntvp", 0, "none", "raw"
    yield "ntvp", None, "diff", "typed"  # a new-style key, jax.random.key
    yield "ntvp", None, "equal", "typed"
    for method in METHODS_UNDER_TEST:
        if method not in ("jacobian", "ntvp"):
            yield method, None, "diff", "raw"
            yield method, 0, "equal", "raw"


@pytest.mark.parametrize("method,vmap,mode,key_kind", [
    pytest.param(*c, marks=[pytest.mark.quick] if c == ("ntvp", None, "diff", "raw") else [])
    for c in _rng_cases()
])
def test_rng_follows_neural_tangents(method, vmap, mode, key_kind):
    """neural-tangents' ``split_kwargs``/``_read_keys``: with x2 None both sides get ``rng``
    itself; with an x2 of other values, x1 gets ``rng`` and x2 gets ``fold_in(rng, 1)``; with an
    x2 equal to x1, both get ``rng``. The mask depends on the key only (not the batch size), so
    the rule also holds with vmap_axes."""
    f, params, x1, x2 = models.mlp_kwargs()
    x2 = {"none": None, "diff": x2, "equal": x1 + 0.0}[mode]
    rng = jax.random.PRNGKey(42) if key_kind == "raw" else jax.random.key(42)
    key2 = jax.random.fold_in(rng, 1) if mode == "diff" else rng
    got = ntkc.ntk_fn(f, vmap_axes=vmap, method=method)(x1, x2, params, rng=rng, scale=1.5)
    want = two_sided_reference(f, x1, x2, params, (-1,), (),
                               {"rng": rng, "scale": 1.5}, {"rng": key2, "scale": 1.5})
    assert_tree_close(got, want)
    if mode == "diff":  # not vacuous: the same key on both sides gives another kernel
        other = reference_ntk(f, x1, x2, params, rng=rng, scale=1.5)
        assert not np.allclose(other, want, rtol=1e-3)


@pytest.mark.quick
def test_rng_pair_and_tuple_kwargs():
    """A pair of keys goes one to each side; with x2 None a tuple of two kwargs still gives one
    item to each side (x2 = x1 then), for every method alike."""
    f, params, x1, x2 = models.mlp_kwargs()
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    for method in ("jacobian", "ntvp"):
        got = ntkc.ntk_fn(f, method=method)(x1, x2, params, rng=(k1, k2))
        assert_tree_close(got, two_sided_reference(f, x1, x2, params, (-1,), (),
                                                   {"rng": k1}, {"rng": k2}))
        got = ntkc.ntk_fn(f, method=method)(x1, None, params, scale=(1.0, 2.0))
        assert_tree_close(got, two_sided_reference(f, x1, x1 + 0.0, params, (-1,), (),
                                                   {"scale": 1.0}, {"scale": 2.0}))


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("method,trace,vmap,mode", [
    pytest.param("ntvp", (), 0, "diff", marks=pytest.mark.quick),
    ("jacobian", (), 0, "diff"),
    ("jacobian", (-1,), 0, "same"),
    ("ntvp", (-1,), 0, "same"),
    ("ntvp", (), None, "none"),
])
def test_one_output_per_example(method, trace, vmap, mode):
    """Output (N,): per example a scalar; trace (-1,) traces the batch axis itself."""
    g, params, x1, x2 = models.mlp()
    f = lambda p, x: g(p, x)[:, 0]
    x2 = pick_x2(x1, x2, mode)
    got = ntkc.ntk_fn(f, trace, (), vmap, method=method)(x1, x2, params)
    assert_tree_close(got, reference_ntk(f, x1, x2, params, trace, ()))


@pytest.mark.parametrize("method,vmap,mode", [("jacobian", 1, "diff"), ("ntvp", -1, "none")])
def test_batch_axis_not_first(method, vmap, mode):
    """Inputs (4, N) and outputs (3, N): an int vmap_axes of 1 (or -1) for both."""
    g, params, x1, x2 = models.mlp()
    f = lambda p, x: g(p, x.T).T
    x1, x2 = x1.T, pick_x2(x1, x2, mode)
    x2 = None if x2 is None else x2.T
    got = ntkc.ntk_fn(f, (0,), (), vmap, method=method)(x1, x2, params)
    assert_tree_close(got, reference_ntk(f, x1, x2, params, (0,), ()))


# ----------------------------------------------------------------------------- empirical_ntk_fn

IMPLEMENTATIONS = [
    (0, "auto"), (1, "jacobian"), (2, "ntvp"),
    (ntkc.NtkImplementation.AUTO, "auto"),
    (ntkc.NtkImplementation.JACOBIAN_CONTRACTION, "jacobian"),
    (ntkc.NtkImplementation.NTK_VECTOR_PRODUCTS, "ntvp"),
    (3, "structured"), (ntkc.NtkImplementation.STRUCTURED_DERIVATIVES, "structured"),
]


@pytest.mark.parametrize("implementation,method", [
    pytest.param(i, m, id=getattr(i, "name", str(i)), marks=[pytest.mark.quick] if i is (
        ntkc.NtkImplementation.JACOBIAN_CONTRACTION) else [])
    for i, m in IMPLEMENTATIONS
])
def test_empirical_ntk_fn(implementation, method):
    """neural-tangents' entry point, positional arguments in its order, equals ntk_fn."""
    f, params, x1, x2 = models.mlp()
    args = ((), (0,), 0)  # trace_axes, diagonal_axes, vmap_axes
    got = ntkc.empirical_ntk_fn(f, *args, implementation=implementation)(x1, None, params)
    if method not in _NTK_FN_RESULTS:
        _NTK_FN_RESULTS[method] = np.asarray(ntkc.ntk_fn(f, *args, method=method)(x1, None, params))
    assert_tree_close(got, _NTK_FN_RESULTS[method])
    assert_tree_close(got, reference_ntk(f, x1, None, params, (), (0,)))


_NTK_FN_RESULTS = {}  # method -> ntk_fn's kernel, shared by the int and enum spellings
