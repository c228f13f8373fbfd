"""ntk_eigenvalues and condition_number, materialised and matrix-free, against
numpy.linalg.eigvalsh of the float64 reference NTK."""

import jax.numpy as jnp
import numpy as np
import pytest

import ntkc

R = np.random.default_rng(1)
PARAMS = {"w": R.standard_normal((4, 32)) / 2, "v": R.standard_normal((32, 3)) / 6}
X = R.standard_normal((14, 4))


def net(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def reference_spectrum(trace_axes):
    k = ntkc.testing.reference_ntk(net, X, None, PARAMS, trace_axes=trace_axes)
    side = int(np.prod(k.shape[0::2]))
    k = np.transpose(k, [*range(0, k.ndim, 2), *range(1, k.ndim, 2)]).reshape(side, side)
    return np.linalg.eigvalsh(k)                      # ascending


def test_materialised_spectrum_matches_eigvalsh():
    want = reference_spectrum((-1,))
    got = ntkc.ntk_eigenvalues(net, X, PARAMS)
    np.testing.assert_allclose(got, want[::-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ntkc.ntk_eigenvalues(net, X, PARAMS, k=3, which="smallest"),
                               want[:3], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ntkc.condition_number(net, X, PARAMS), want[-1] / want[0],
                               rtol=1e-8)


@pytest.mark.parametrize("trace_axes", [(-1,), ()])
def test_matrix_free_extremes_match_eigvalsh(trace_axes):
    want = reference_spectrum(trace_axes)            # 14 (traced) or 42 (untraced) eigenvalues
    top = ntkc.ntk_eigenvalues(net, X, PARAMS, k=4, trace_axes=trace_axes, matrix_free=True)
    np.testing.assert_allclose(top, want[::-1][:4], rtol=1e-8)
    low = ntkc.ntk_eigenvalues(net, X, PARAMS, k=2, which="smallest", trace_axes=trace_axes,
                               matrix_free=True)
    np.testing.assert_allclose(low, want[:2], rtol=1e-6, atol=1e-10 * want[-1])


def test_matrix_free_condition_number_matches_eigvalsh():
    want = reference_spectrum((-1,))
    got = ntkc.condition_number(net, X, PARAMS, matrix_free=True)
    np.testing.assert_allclose(got, want[-1] / want[0], rtol=1e-6)


def test_rank_deficient_kernel_has_infinite_condition_number():
    f = lambda p, x: x @ p                             # 2 parameters, 5 examples: rank 2
    assert ntkc.condition_number(f, R.standard_normal((5, 2)), np.ones((2, 1)),
                                 trace_axes=()) == np.inf


@pytest.mark.parametrize("kwargs,match", [({"which": "top"}, "which"), ({"k": 0}, "k"),
                                          ({"k": 99}, "k=99"),
                                          ({"k": None, "matrix_free": True}, "matrix_free")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ntkc.ntk_eigenvalues(net, X, PARAMS, **kwargs)


def test_pytree_outputs_are_rejected():
    with pytest.raises(ValueError, match="single array"):
        ntkc.ntk_eigenvalues(lambda p, x: (net(p, x), net(p, x)), X, PARAMS, k=2)


def test_bench_toolkit_imports_and_rejects_an_unknown_part():
    from bench import linearized_figure, toolkit  # noqa: F401  (the scripts are not run here)

    with pytest.raises(SystemExit):
        toolkit.main(["--parts", "nope"])
