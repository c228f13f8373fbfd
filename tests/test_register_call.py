"""A user's own call-like primitive (its parameters hold a ClosedJaxpr): ``ntkc.register_call``
inlines it, so the rules inside apply under strict=True; without the registration the dense
fallback of the call is still exact. The primitive is docs/extending.md's ``fused`` (its code
blocks run here as written, as in tests/test_custom_rule.py)."""

import contextlib
import io
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import docblocks
import ntkc
from ntkc.rules.registry import unregister_call
from ntkc.testing import reference_ntk

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"
METHODS = ("structured", "jacobian", "ntvp", "auto")
# (trace_axes, diagonal_axes, vmap_axes, symmetric)
SETTINGS = [((-1,), (), 0, False), ((), (), None, False), ((), (0,), 0, True),
            ((-1,), (), None, True)]


@pytest.fixture(scope="module")
def doc():
    with contextlib.redirect_stdout(io.StringIO()):
        return docblocks.run(DOC, {"__name__": "extending_doc_calls"})


@pytest.fixture(scope="module")
def unregistered(doc):
    """The doc's ``fused`` primitive and model again, as a new primitive ``fused_fresh`` that is
    not registered."""
    blocks = [b.source for b in docblocks.python_blocks(DOC) if b.runs]
    define = next(b for b in blocks if 'Primitive("fused")' in b)
    model = next(b for b in blocks if "def fused_mlp" in b)
    model = model[:model.index("fused_params =")]  # the model only, no kernels
    namespace = dict(doc)
    exec(define.replace('Primitive("fused")', 'Primitive("fused_fresh")'), namespace)
    exec(model, namespace)
    return namespace


def check(ns, method, setting, strict):
    trace, diagonal, vmap_axes, symmetric = setting
    f, params, x1 = ns["fused_mlp"], ns["fused_params"], ns["x1"]
    x2 = None if symmetric else ns["x2"]
    got = ntkc.ntk_fn(f, trace, diagonal, vmap_axes, method=method, strict=strict)(
        x1, x2, params)
    want = reference_ntk(f, x1, x2, params, trace, diagonal)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_registered_call_is_inlined(doc, method, setting):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback anywhere
        check(doc, method, setting, strict=method == "structured")


def test_registered_call_has_no_fallback(doc):
    plan = ntkc.plan(doc["fused_mlp"], doc["x1"], doc["x2"], doc["fused_params"],
                     method="structured", strict=True, vmap_axes=0)
    assert not plan.fallbacks
    blocks = [t for t in plan.terms if t.leaf.startswith("['blocks']")]
    assert {t.primitives for t in blocks} == {("dot_general", "dot_general"),
                                              ("broadcast_in_dim", "broadcast_in_dim")}


@pytest.mark.parametrize("setting", SETTINGS)
def test_unregistered_call_takes_the_dense_fallback_exactly(unregistered, setting):
    with pytest.warns(UserWarning, match="no structured rule for primitive 'fused_fresh'"):
        check(unregistered, "structured", setting, strict=False)
    with pytest.raises(ntkc.UnsupportedPrimitiveError, match="fused_fresh"):
        check(unregistered, "structured", setting, strict=True)


@pytest.mark.parametrize("method", ("jacobian", "ntvp"))
def test_unregistered_call_other_methods(unregistered, method):
    check(unregistered, method, SETTINGS[0], strict=False)


def test_register_call_argument_errors(doc):
    with pytest.raises(TypeError, match="expected a primitive"):
        ntkc.register_call("fused", lambda params: params["jaxpr"])
    with pytest.raises(TypeError, match="get_jaxpr must be callable"):
        ntkc.register_call(doc["fused_p"], "jaxpr")


def test_get_jaxpr_must_return_a_jaxpr(unregistered):
    prim = unregistered["fused_p"]
    ntkc.register_call(prim, lambda params: params)  # a dict: wrong
    try:
        with pytest.raises(TypeError, match="get_jaxpr returned dict"):
            ntkc.ntk_fn(unregistered["fused_mlp"], method="structured")(
                unregistered["x1"], None, unregistered["fused_params"])
    finally:
        unregister_call(prim)
