"""Import neural-tangents 0.6.5's ``empirical_ntk_fn`` in a benchmark-only environment.

Used only by ``bench/compare_nt.py``'s worker processes inside the ``.venv-nt-*`` virtual
environments; ntkc never imports it, and neither neural-tangents nor an old JAX is a dependency
of ntkc.

Three stand-ins, applied in the worker process before ``import neural_tangents``:

- ``neural_tangents.experimental`` is replaced by an empty module. Its only content is
  ``empirical_ntk_fn_tf`` (the TensorFlow port), which imports ``jax.experimental.jax2tf``,
  ``tensorflow`` and ``tf2jax``; ``empirical_ntk_fn`` needs none of them.
- On JAX versions that removed internals neural-tangents imports (JAX >= 0.4.36 or so), the
  missing names are aliased to their current homes in ``jax._src``. Each alias is set only when
  the name is missing, so on JAX 0.4.25 nothing is changed but the stub above.
- On JAX versions whose ``slice`` and ``dynamic_slice`` transposes are "fancy" (JAX 0.9:
  registered in ``ad.fancy_transposes`` only), a classic transpose rule that runs the fancy one
  is registered for them, as neural-tangents' backward pass reads the classic table.
- ``implementation=AUTO`` counts FLOPs with ``compiled.cost_analysis()[0]``; newer JAX returns a
  dict, not a list of dicts, so its helper is replaced by one that reads either.
"""

from __future__ import annotations

import sys
import types
import warnings

ALIASES_APPLIED: list[str] = []


def _alias(module, name, value):
    if not hasattr(module, name):
        setattr(module, name, value)
        ALIASES_APPLIED.append(f"{module.__name__}.{name}")


def _patch_jax():
    import jax
    import jax.core
    import jax.interpreters.ad as ad
    from jax._src import core as src_core
    from jax._src import config as src_config
    from jax._src import source_info_util
    from jax._src.interpreters import ad as src_ad

    # jax.core: the jaxpr types neural-tangents' structured rules read.
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive", "ShapedArray", "Value",
                 "AbstractValue", "get_aval"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            missing = not hasattr(jax.core, name)
        if missing:
            _alias(jax.core, name, getattr(src_core, name))
    if not hasattr(jax.core, "DShapedArray"):
        # Dynamic shapes are gone; `type(a) is core.DShapedArray` must simply be False.
        _alias(jax.core, "DShapedArray", type("DShapedArray", (), {}))
    if not hasattr(jax.core, "lattice_join"):
        # Only reached under jax_enable_checks; the avals of one variable's cotangents agree.
        _alias(jax.core, "lattice_join", lambda a, b: a)

    # jax.util: removed as a public module (JAX 0.8); neural-tangents wants safe_map, safe_zip.
    try:
        import jax.util  # noqa: F401
    except ImportError:
        from jax._src import util as src_util

        util = types.ModuleType("jax.util")
        util.safe_map, util.safe_zip = src_util.safe_map, src_util.safe_zip
        sys.modules["jax.util"] = util
        jax.util = util
        ALIASES_APPLIED.append("jax.util (module: safe_map, safe_zip)")

    # jax.interpreters.ad: the backward-pass helpers neural-tangents reimplements.
    _alias(ad, "source_info_util", source_info_util)
    _alias(ad, "config", src_config.config if hasattr(src_config, "config") else jax.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ad.reducing_transposes  # deprecated in 0.9.0, still there
        except AttributeError:
            _alias(ad, "reducing_transposes", getattr(src_ad, "reducing_transposes", {}))
        try:
            ad.zeros_like_p
        except AttributeError:
            # Removed in JAX 0.9.0; neural-tangents only uses it as a key in its rule tables.
            _alias(ad, "zeros_like_p", src_core.Primitive("zeros_like"))

    # Transposes that JAX moved to `ad.fancy_transposes` (rules that accumulate into the
    # operands' GradAccum instead of returning cotangents): neural-tangents' own backward pass
    # reads `ad.get_primitive_transpose`, so e.g. ViT's class-token slice fails with "Transpose
    # rule for 'slice' not implemented". A classic rule that runs the fancy one is added for
    # the plain (non-call) primitives among them, where none is registered.
    from jax._src.lax import slicing

    for prim in (slicing.slice_p, slicing.dynamic_slice_p):
        fancy = getattr(src_ad, "fancy_transposes", {}).get(prim)
        if fancy is not None and prim not in src_ad.primitive_transposes:
            src_ad.primitive_transposes[prim] = _classic_transpose(src_ad, fancy)
            ALIASES_APPLIED.append(f"jax.interpreters.ad.primitive_transposes[{prim.name}] "
                                   "(from fancy_transposes)")


def _classic_transpose(ad, fancy):
    """``rule(ct, *invals, **params) -> cotangents per operand`` from a fancy rule that
    accumulates into a ``GradAccum`` per linear operand (None for the others)."""
    from jax._src.interpreters import ad as src_ad

    def transpose(ct, *invals, **params):
        accs = [src_ad.ValAccum(x.aval) if ad.is_undefined_primal(x) else x for x in invals]
        fancy(ct, *accs, **params)
        return [a.freeze() if isinstance(a, src_ad.ValAccum) else None for a in accs]

    return transpose


def import_nt():
    """Return the ``neural_tangents`` module, with the stand-ins above applied."""
    stub = types.ModuleType("neural_tangents.experimental")
    stub.__doc__ = "Stand-in: the TensorFlow port is not needed by empirical_ntk_fn."
    sys.modules.setdefault("neural_tangents.experimental", stub)
    _patch_jax()
    import neural_tangents
    from neural_tangents._src import empirical

    _patch_auto_flops(empirical)
    return neural_tangents


def _patch_auto_flops(empirical):
    """``implementation=AUTO`` reads ``compiled.cost_analysis()[0]``; newer JAX returns the dict
    itself (not a one-element list), so AUTO fails with ``KeyError: 0``. Read either form."""
    import jax

    original = empirical._get_flops

    def _get_flops(f, optimize, *a, **kw):
        e = jax.jit(f).lower(*a, **kw)
        analysis = e.compile().cost_analysis() if optimize else e.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0]
        return analysis["flops"]

    _get_flops.__wrapped__ = original
    empirical._get_flops = _get_flops
    ALIASES_APPLIED.append("neural_tangents._src.empirical._get_flops (cost_analysis as dict or list)")
