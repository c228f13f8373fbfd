"""XLA compiler options of ntkc's programs (``ntkc._compat.compiler_options``).

On CPU, a function with convolutions gets XLA's own convolution kernels instead of YNNPACK's
(2-3x faster for the NTK's batched convolutions on jaxlib 0.10): the option is chosen from f's
jaxpr (sub-jaxprs included), only when this XLA accepts it, and it reaches every program ntkc
compiles (the kernel function, ``ntkc.compile`` and its saved file, ``ntkc.gram``); functions
without convolutions keep XLA's defaults.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc import _compat
from ntkc.testing import reference_ntk

import models

OPTIONS = _compat._cpu_conv_options()
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


@pytest.mark.quick
def test_the_probe_keeps_only_options_this_xla_accepts():
    assert OPTIONS in ((), _compat._CPU_CONV_OPTIONS)
    if jax.default_backend() == "cpu" and OPTIONS:
        jax.jit(lambda a: a * 2, compiler_options=dict(OPTIONS)).lower(1.0).compile()
    assert _compat.known_options(dict(OPTIONS)) == OPTIONS
    assert _compat.known_options({"xla_no_such_option": "1"}) == ()


def test_convolutions_are_found_in_sub_jaxprs():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    plain = jax.make_jaxpr(lambda x: jnp.tanh(x) * 2)(x)
    direct = jax.make_jaxpr(conv)(x, w)
    in_jit = jax.make_jaxpr(lambda x, w: jax.jit(conv)(x, w) + 1)(x, w)
    in_scan = jax.make_jaxpr(lambda x, w: lax.scan(lambda h, _: (conv(h, w), None), x, None,
                                                   length=2)[0])(x, w)
    in_cond = jax.make_jaxpr(lambda x, w: lax.cond(True, conv, lambda x, w: x, x, w))(x, w)
    assert "conv_general_dilated" not in _compat.primitive_names(plain)
    assert _compat.compiler_options(plain) == ()
    for jaxpr in (direct, in_jit, in_scan, in_cond):
        assert "conv_general_dilated" in _compat.primitive_names(jaxpr)
        assert _compat.compiler_options(jaxpr) == OPTIONS


@pytest.mark.quick
def test_kernel_functions_report_their_options():
    f, params, x1, x2 = models.cnn()
    kfn = ntkc.ntk_fn(f, vmap_axes=0)
    assert kfn.compiler_options(x1, x2, params) == dict(OPTIONS)
    np.testing.assert_allclose(kfn(x1, x2, params), reference_ntk(f, x1, x2, params),
                               rtol=1e-10, atol=1e-12)
    f, params, x1, x2 = models.mlp()
    assert ntkc.ntk_fn(f).compiler_options(x1, x2, params) == {}


def _ynn_convolutions(hlo_text: str) -> int:
    """Convolutions XLA:CPU placed in YNNPACK fusions (0 on XLAs without them)."""
    fused = set(re.findall(r"calls=%?([\w.\-]+)", "\n".join(
        l for l in hlo_text.splitlines() if "__ynn_fusion" in l)))
    bodies = re.split(r"\n(?=%?[\w.\-]+ [(])", hlo_text)
    return sum(1 for b in bodies if b.split(" ", 1)[0].lstrip("%") in fused and "convolution(" in b)


def test_the_options_reach_the_compiled_program(tmp_path):
    """Where XLA would hand the convolutions to YNNPACK by default, ntkc.compile's program
    keeps them out, and a saved program records its options and is loaded with them."""
    f, params, x1, x2 = models.cnn()
    compiled = ntkc.compile(f, x1, x2, params, vmap_axes=0, method="structured")
    default = jax.jit(lambda a, b, p: ntkc.ntk_fn(f, vmap_axes=0, method="structured")(a, b, p))
    if _ynn_convolutions(default.lower(x1, x2, params).compile().as_text()):
        assert OPTIONS and _ynn_convolutions(compiled.executable.as_text()) == 0
    loaded = ntkc.load(compiled.save(tmp_path / "cnn.ntkc"))
    assert loaded.metadata["compiler_options"] == dict(OPTIONS)
    np.testing.assert_allclose(loaded(x1, x2, params), compiled(x1, x2, params), rtol=1e-12)


def test_gram_programs_use_the_kernel_functions_options():
    f, params, x1, _ = models.cnn()
    x = jnp.concatenate([x1, x1 * 0.5, x1 + 1.0])
    gram = ntkc.gram(f, params, x, batch_size=len(x1), method="structured", vmap_axes=0,
                     progress=False)
    np.testing.assert_allclose(gram, reference_ntk(f, x, None, params), rtol=1e-10, atol=1e-12)


def test_inside_a_users_jit_the_kernel_takes_the_outer_options():
    """Called under a tracer (grad, the user's jit), the kernel function's own jit carries no
    options (JAX refuses them on a nested jit); the user's top-level jit can carry them."""
    f, params, x1, _ = models.cnn()
    kfn = ntkc.ntk_fn(f, vmap_axes=0)
    loss = lambda x, p: jnp.sum(kfn(x, None, p) ** 2)
    options = kfn.compiler_options(x1, None, params)
    with_options = jax.jit(jax.grad(loss), compiler_options=options or None)(x1, params)
    plain = jax.jit(jax.grad(loss))(x1, params)
    eager = jax.grad(loss)(x1, params)
    np.testing.assert_allclose(with_options, plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(eager, plain, rtol=1e-10, atol=1e-12)
