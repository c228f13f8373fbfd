"""User rules: ``ntkc.register_rule`` for a primitive of one's own (docs/extending.md, run as
written), overriding a built-in rule, and ``ntkc.testing.check_rule`` catching wrong rules."""

import contextlib
import io
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import docblocks
import ntkc
from ntkc.rules import registered, unregister

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_blocks():
    return [b.source for b in docblocks.python_blocks(DOC) if b.runs]


def exec_blocks(blocks, namespace):
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}[python block {i}]", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def doc():
    """docs/extending.md's code blocks run in order, as one script: ``(namespace, stdout)``.
    (tests/test_docs.py leaves this doc to this fixture.)"""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace = docblocks.run(DOC, {"__name__": "extending_doc"})
    return namespace, out.getvalue()


@pytest.fixture(scope="module")
def fresh():
    """The doc's primitive and model again, as a new primitive named ``rowscale_fresh`` with no
    rule registered and no fallback reported yet."""
    blocks = doc_blocks()
    assert 'Primitive("rowscale")' in blocks[0]
    source = blocks[0].replace('Primitive("rowscale")', 'Primitive("rowscale_fresh")')
    return exec_blocks([source, blocks[1]], {"__name__": "extending_fresh"})


@contextlib.contextmanager
def rule(primitive, fn, structure="test rule"):
    """``fn`` registered for ``primitive`` for the duration; the previous rule (or none) after."""
    previous = registered().get(primitive)
    ntkc.register_rule(primitive, structure)(fn)
    try:
        yield
    finally:
        if previous is None:
            unregister(primitive)
        else:
            ntkc.register_rule(primitive, previous.structure)(previous.fn)


# ----------------------------------------------------------------------------- the doc


@pytest.mark.quick
def test_doc_runs_and_prints_what_it_says(doc):
    _, text = doc
    lines = text.splitlines()
    assert lines[0] == "(4, 3)"
    assert lines[1] == (
        "primitive 'rowscale' has no structured rule (no rule) and strict=True; pass "
        "strict=False to use the dense fallback, or register a rule with ntkc.register_rule")
    assert lines[2].startswith("ntkc: no structured rule for primitive 'rowscale' (no rule)")
    assert lines[3:7] == ["True"] * 4  # the fallback is correct; three check_rule calls pass
    assert lines[7] == ("rule of 'rowscale' with operand 0 as p, output 0: label 'i' has size 3 "
                        "on y axis 2 but size 5 on factor 0 axis 0")
    assert lines[8].startswith("rule of 'rowscale' with operand 0 as p, output 0: the Form's "
                               "Jacobian differs from jax.jacfwd of the primitive: max |deviation|")
    assert lines[9:11] == ["None True", "0 True"]
    assert "Plan: method=structured, kernels (4, 3)" in text
    rows = [l for l in lines if l.startswith("output ")]
    assert any("['g']" in l and "rowscale x rowscale" in l and "diagonal (row gains)" in l
               for l in rows)
    assert any("['w']" in l and "rowscale x rowscale" in l and "diagonal (row scale)" in l
               for l in rows)
    assert lines[-1] == "True"  # the mul override's check


def test_doc_restores_what_it_overrides(doc):
    namespace, _ = doc
    assert registered()[lax.mul_p] == namespace["builtin"]  # the built-in mul rule is back
    assert registered()[namespace["rowscale_p"]].fn is namespace["_rowscale_rule"]


# ----------------------------------------------------------------------------- a correct rule


@pytest.mark.parametrize("vmap_axes, trace_axes, same", [
    pytest.param(None, (-1,), False, marks=pytest.mark.quick),
    (0, (-1,), False),
    (0, (), True),
])
def test_rule_gives_the_reference_kernel_under_strict(doc, vmap_axes, trace_axes, same):
    ns, _ = doc
    f, params, x1 = ns["f"], ns["params"], ns["x1"]
    x2 = None if same else ns["x2"]
    reference = ntkc.testing.reference_ntk(f, x1, x2, params, trace_axes=trace_axes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        theta = ntkc.ntk_fn(f, method="structured", strict=True, vmap_axes=vmap_axes,
                            trace_axes=trace_axes)(x1, x2, params)
    np.testing.assert_allclose(np.asarray(theta), reference, rtol=1e-10, atol=1e-10)


def test_plan_uses_the_rule(doc):
    ns, _ = doc
    plan = ntkc.plan(ns["f"], ns["x1"], None, ns["params"], method="structured", strict=True,
                     vmap_axes=0)
    terms = {t.leaf: t for t in plan.terms}
    for leaf, structure in (("['w']", "diagonal (row scale)"), ("['v']", "diagonal (row scale)"),
                            ("['g']", "diagonal (row gains)")):
        assert terms[leaf].primitives == ("rowscale", "rowscale")
        assert terms[leaf].structure == (structure, structure)
        assert terms[leaf].method != "dense"


@pytest.mark.parametrize("s_shape, dtype", [((3,), jnp.float64), ((4, 3), jnp.float32),
                                            ((2, 1, 3), jnp.float64)])
def test_check_rule_accepts_the_rule(doc, s_shape, dtype):
    ns, _ = doc
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.standard_normal(s_shape), dtype)
    p = jnp.asarray(rng.standard_normal((3, 2)), dtype)
    assert ntkc.testing.check_rule(ns["rowscale_p"], s, p) is True  # both operands


def test_check_rule_index_forms(doc):
    ns, _ = doc
    s, p = jnp.ones((2, 3)), jnp.ones((3, 4))
    assert ntkc.testing.check_rule(ns["rowscale_p"], s, p, index=(1,)) is True
    assert ntkc.testing.check_rule(ns["rowscale"], s, p, index=-1) is True  # a function


# ----------------------------------------------------------------------------- no rule


def test_without_a_rule_strict_raises_and_the_fallback_is_correct(fresh, doc):
    f, params, x1, x2 = fresh["f"], fresh["params"], fresh["x1"], fresh["x2"]
    prim = fresh["rowscale_p"]
    assert prim.name == "rowscale_fresh" and prim not in registered()
    with pytest.raises(ntkc.UnsupportedPrimitiveError, match="primitive 'rowscale_fresh' has no"):
        ntkc.ntk_fn(f, method="structured", strict=True)(x1, x2, params)
    reference = ntkc.testing.reference_ntk(f, x1, x2, params)
    with pytest.warns(UserWarning, match="no structured rule for primitive 'rowscale_fresh'"):
        theta = ntkc.ntk_fn(f, method="structured", vmap_axes=0)(x1, x2, params)
    np.testing.assert_allclose(np.asarray(theta), reference, rtol=1e-10, atol=1e-10)
    # the plan shows the fallback
    plan = ntkc.plan(f, x1, x2, params, method="structured", vmap_axes=0)
    assert {t.method for t in plan.terms if "rowscale_fresh" in t.primitives} == {"dense"}
    # the doc's rule, registered for this primitive, makes strict pass
    with rule(prim, doc[0]["_rowscale_rule"]):
        theta = ntkc.ntk_fn(f, method="structured", strict=True)(x1, x2, params)
    np.testing.assert_allclose(np.asarray(theta), reference, rtol=1e-10, atol=1e-10)


def test_check_rule_without_a_rule(fresh):
    s, p = jnp.ones((2, 3)), jnp.ones((3, 4))
    with pytest.raises(AssertionError, match="no rule registered for rowscale_fresh"):
        ntkc.testing.check_rule(fresh["rowscale_p"], s, p)


# ----------------------------------------------------------------------------- wrong rules


def _lead(shapes):
    return tuple(("lead", a) for a in range(len(shapes[0]) - 1))


def _p_rule(make):
    """A rule for p (operand 1) built by ``make(s, lead, outs)``; declines for s."""

    def fn(*, operands, index, outs, shapes, **_):
        if index != 1:
            return None
        return make(operands[0], _lead(shapes), outs)

    return fn


def _form(y, p, factors=(), structure="wrong"):
    return ntkc.Form(y, p, factors, structure)


WRONG = {
    "value": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((2 * s, l + ("i",)),))]),
              ["output 0", "differs from jax.jacfwd", "max |deviation| = ", "> tolerance",
               "at J["]),
    "missing_factor": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"))]),
                       ["differs from jax.jacfwd", "max |deviation|"]),
    "two_forms": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((s, l + ("i",)),))] * 2),
                  ["returned 2 Form(s) for a primitive with 1 output(s)"]),
    "not_a_list": (_p_rule(lambda s, l, o: _form(l + ("i", "j"), ("i", "j"), ((s, l + ("i",)),))),
                   ["returned Form, expected a list of one ntkc.Form per output"]),
    "not_a_form": (_p_rule(lambda s, l, o: [(l + ("i", "j"), ("i", "j"))]),
                   ["output 0: the rule returned", "not an ntkc.Form"]),
    "out_labels_short": (_p_rule(lambda s, l, o: [_form(l + ("i",), ("i", "j"), ((s, l + ("i",)),))]),
                         ["output 0: out_labels", "for an output of rank 3", "one label per output axis"]),
    "param_labels_long": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j", "k"), ((s, l + ("i",)),))]),
                          ["param_labels ('i', 'j', 'k') has 3 labels for p of rank 2",
                           "one label per p axis"]),
    "factor_rank": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((s, ("i",)),))]),
                    ["factor 0 has shape (4, 3) (rank 2) but 1 labels", "one label per factor axis"]),
    "label_size": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("j", "i"), ((s, l + ("i",)),))]),
                   ["label 'j' has size 2 on y axis 2 but size 3 on p axis 0"]),
    "repeated_y_label": (_p_rule(lambda s, l, o: [_form(("i", "i", "j"), ("i", "j"), ((s, ("i", "i")),))]),
                         ["label 'i' repeated in out_labels"]),
    "no_structure": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((s, l + ("i",)),), "")]),
                     ["the Form's structure is ''"]),
    "integer_factor": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((s.astype(jnp.int32), l + ("i",)),))]),
                       ["factor 0 has dtype int32; factors are floating point"]),
    "numpy_on_operands": (_p_rule(lambda s, l, o: [_form(l + ("i", "j"), ("i", "j"), ((np.asarray(s), l + ("i",)),))]),
                          ["fails under jax.jit", "compute with jnp"]),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_check_rule_catches_a_wrong_rule(fresh, name):
    fn, fragments = WRONG[name]
    rng = np.random.default_rng(2)
    s, p = jnp.asarray(rng.standard_normal((4, 3))), jnp.asarray(rng.standard_normal((3, 2)))
    with rule(fresh["rowscale_p"], fn):
        with pytest.raises(AssertionError) as info:
            ntkc.testing.check_rule(fresh["rowscale_p"], s, p, index=1)
    message = str(info.value)
    assert message.startswith("rule of 'rowscale_fresh' with operand 1 as p"), message
    for fragment in fragments:
        assert fragment in message, message


def test_check_rule_declines(fresh):
    decline = _p_rule(lambda s, l, o: None)
    s, p = jnp.ones((4, 3)), jnp.ones((3, 2))
    with rule(fresh["rowscale_p"], decline):
        with pytest.raises(AssertionError, match="operand 1 as p: the rule declined"):
            ntkc.testing.check_rule(fresh["rowscale_p"], s, p, index=1)
        with pytest.raises(AssertionError, match=r"declined \(returned None\) for every operand"):
            ntkc.testing.check_rule(fresh["rowscale_p"], s, p)


def test_check_rule_reports_a_missing_transpose(fresh, doc):
    """The reverse-mode check needs the primitive's transpose rule: say so."""
    from jax.interpreters import ad  # as in the doc: user code defining its primitive

    prim = fresh["rowscale_p"]
    transpose = ad.primitive_transposes.pop(prim)
    try:
        with rule(prim, doc[0]["_rowscale_rule"]):
            with pytest.raises(AssertionError, match="does it have a transpose rule"):
                ntkc.testing.check_rule(prim, jnp.ones((4, 3)), jnp.ones((3, 2)), index=1)
    finally:
        ad.primitive_transposes[prim] = transpose


# ----------------------------------------------------------------------------- built-in rules


@pytest.mark.quick
def test_override_a_builtin_rule_and_restore_it():
    original = registered()[lax.mul_p]
    a = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3)))
    b = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3)))

    @ntkc.register_rule(lax.mul_p, "identity (wrong: the other operand is missing)")
    def forgets_the_factor(*, operands, index, outs, shapes, **_):
        labels = tuple(range(len(outs[0].shape)))
        return [ntkc.Form(labels, labels, (), "identity")]

    try:
        assert registered()[lax.mul_p].fn is forgets_the_factor
        with pytest.raises(AssertionError) as info:
            ntkc.testing.check_rule(lax.mul, a, b)
        message = str(info.value)
        assert message.startswith("rule of 'mul' with operand 0 as p, output 0: the Form's "
                                  "Jacobian differs from jax.jacfwd"), message
        assert "max |deviation|" in message
    finally:
        ntkc.register_rule(lax.mul_p, original.structure)(original.fn)
    assert registered()[lax.mul_p] == original
    assert ntkc.testing.check_rule(lax.mul, a, b) is True


def test_check_rule_on_builtin_rules():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 3)))
    w = jnp.asarray(np.random.default_rng(6).standard_normal((3, 2)))
    assert ntkc.testing.check_rule(lambda x, w: x @ w, x, w) is True
    assert ntkc.testing.check_rule(lax.reduce_sum, x, axes=(1,)) is True  # params as keywords
    assert ntkc.testing.check_rule(lambda e, i: e[i], x, jnp.array([2, 0, 2])) is True  # gather
    assert ntkc.testing.check_rule(lambda x: jnp.split(x, 2), x) is True  # two outputs
    with pytest.raises(IndexError, match="index 2 is out of range for 2 operands"):
        ntkc.testing.check_rule(lax.mul, x, x, index=2)


def test_register_rule_argument_errors():
    with pytest.raises(TypeError, match="expected a primitive"):
        ntkc.register_rule("mul")
    with pytest.raises(TypeError, match="structure must be a string"):
        ntkc.register_rule(lax.mul_p, structure=None)

    def bad(operands, index):
        return None

    with pytest.raises(TypeError, match="must accept the keyword arguments.*lacks outs, shapes"):
        ntkc.register_rule(lax.mul_p, "x")(bad)
    assert registered()[lax.mul_p].fn is not bad  # nothing was registered


def test_public_names():
    assert ntkc.Form is ntkc.ir.Form and ntkc.OneHot is ntkc.ir.OneHot
    assert {"Form", "OneHot", "register_rule"} <= set(ntkc.__all__)
    assert "**_" in ntkc.register_rule.__doc__ and "None" in ntkc.register_rule.__doc__
