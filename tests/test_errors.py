"""Bad input gives a clear error that names the offending argument; checks run once per signature.

Each case builds the kernel function and calls it inside ``pytest.raises``, so a check may move
from call time to construction time without breaking the test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc.testing import reference_ntk


def mlp(params, x):
    return jnp.tanh(x @ params["w"]) @ params["v"]


def mlp_kw(params, x, scale):
    return mlp(params, x) * jnp.mean(scale)


PARAMS = {"w": jnp.ones((3, 5)) / 3, "v": jnp.ones((5, 2)) / 5}
X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)  # N=2 examples, 3 input features
X3 = jnp.linspace(-1.0, 1.0, 9).reshape(3, 3)  # N=3 examples


def kernel(f=mlp, x1=X, x2=None, params=PARAMS, kwargs=None, **options):
    return ntkc.ntk_fn(f, **options)(x1, x2, params, **(kwargs or {}))


# ----------------------------------------------------------------------------- inputs


def test_x1_with_wrong_features_names_x1():
    with pytest.raises(ValueError, match=r"x1 of shape \(2, 4\)"):
        kernel(x1=jnp.ones((2, 4)))


def test_x2_with_wrong_features_names_x2():
    with pytest.raises(ValueError, match=r"x2 of shape \(2, 4\)"):
        kernel(x2=jnp.ones((2, 4)))


def test_x1_none():
    with pytest.raises(ValueError, match="x1 is None"):
        kernel(x1=None)
    with pytest.raises(ValueError, match="x1 is None"):
        kernel(x1=None, x2=X)


def test_x1_and_x2_with_different_structures():
    f = lambda p, x: mlp(p, jax.tree.leaves(x)[0])
    with pytest.raises(ValueError, match="x1 and x2 have different structures"):
        kernel(f, x1=(X,), x2=[X])
    with pytest.raises(ValueError, match="x1 and x2 have different structures"):
        kernel(f, x1={"a": X}, x2={"b": X})


# ----------------------------------------------------------------------------- params


def test_integer_params_name_the_leaf():
    params = {"w": jnp.ones((3, 5), jnp.int32), "v": PARAMS["v"]}
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype int32"):
        kernel(params=params)


@pytest.mark.parametrize("params", [None, {}, [], {"w": None}])
def test_missing_params(params):
    with pytest.raises(ValueError, match="params has no array leaves"):
        kernel(params=params)


# ----------------------------------------------------------------------------- outputs


def test_integer_output_leaf():
    f = lambda p, x: (mlp(p, x), jnp.argmax(x, axis=-1))
    with pytest.raises(TypeError, match=r"f\(params, x1\) returns a leaf of dtype int"):
        kernel(f)


# ----------------------------------------------------------------------------- trace and diagonal axes


@pytest.mark.parametrize("axes", [2, (-3,), (0, 5)])
def test_trace_axis_out_of_range(axes):
    with pytest.raises(ValueError, match="trace_axes: axis .* out of range"):
        kernel(trace_axes=axes)


@pytest.mark.parametrize("axes", [2, (-3,)])
def test_diagonal_axis_out_of_range(axes):
    with pytest.raises(ValueError, match="diagonal_axes: axis .* out of range"):
        kernel(diagonal_axes=axes, trace_axes=())


def test_trace_axes_of_wrong_type():
    with pytest.raises(TypeError, match="trace_axes must hold ints"):
        kernel(trace_axes="a")


def test_axis_both_traced_and_diagonal():
    with pytest.raises(ValueError, match=r"both trace_axes=\(0,\) and diagonal_axes=\(-2,\)"):
        kernel(trace_axes=(0,), diagonal_axes=(-2,))


def test_traced_axis_with_different_sizes():
    with pytest.raises(ValueError, match="trace_axes: axis 0 has size 2 in f\\(x1\\).* but 3"):
        kernel(x2=X3, trace_axes=(0,))


def test_diagonal_axis_with_different_sizes():
    with pytest.raises(ValueError, match="diagonal_axes: axis 0 has size 2 in f\\(x1\\).* but 3"):
        kernel(x2=X3, trace_axes=(), diagonal_axes=(0,), vmap_axes=0)


# ----------------------------------------------------------------------------- method / implementation


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="method='fast'") as info:
        ntkc.ntk_fn(mlp, method="fast")
    for name in ntkc.METHODS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("implementation", [7, -1, "jacobian"])
def test_unknown_implementation(implementation):
    with pytest.raises(ValueError, match=f"implementation={implementation!r} is not one of 0, 1, 2, 3"):
        ntkc.empirical_ntk_fn(mlp, implementation=implementation)


# ----------------------------------------------------------------------------- vmap_axes


def test_vmap_axis_out_of_range_for_x():
    with pytest.raises(ValueError, match=r"vmap_axes: batch axis 2 is out of range for x1 of shape \(2, 3\)"):
        kernel(vmap_axes=2)


def test_vmap_axis_of_a_scalar_input():
    f = lambda p, x: mlp(p, x * jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"batch axis 0 is out of range for x1 of shape \(\)"):
        kernel(f, x1=jnp.float64(1.0), vmap_axes=0)


def test_vmap_inconsistent_batch_sizes_across_leaves():
    f = lambda p, x: mlp(p, x["a"]) + jnp.sum(x["b"])
    x = {"a": X, "b": X3}
    with pytest.raises(ValueError, match=r"2 in x1\['a'\] but 3 in x1\['b'\]"):
        kernel(f, x1=x, vmap_axes=0)


def test_vmap_inconsistent_batch_sizes_between_x_and_kwargs():
    with pytest.raises(ValueError, match=r"2 in x1 but 3 in kwargs\['scale'\]"):
        kernel(mlp_kw, kwargs={"scale": jnp.ones(3)}, vmap_axes=(0, 0, {"scale": 0}))


def test_vmap_in_axes_structure_mismatch():
    with pytest.raises(ValueError, match="vmap_axes: in_axes=.* does not match the structure of the inputs"):
        kernel(vmap_axes=((0, 0), 0, {}))


def test_vmap_out_axis_out_of_range():
    with pytest.raises(ValueError, match=r"vmap_axes: out_axes gives 5, which is not an axis"):
        kernel(vmap_axes=(0, 5, {}))


def test_vmap_out_axis_with_wrong_size():
    f = lambda p, x: mlp(p, x).T  # (2 outputs, N=3 examples)
    with pytest.raises(ValueError, match="vmap_axes: output axis 0 has sizes 2 and 2 .* 3 and 3"):
        kernel(f, x1=X3, vmap_axes=(0, 0, {}))


def test_vmap_out_axis_that_is_not_the_batch_axis():
    # Output (N=2, 2): axis 1 has the batch size but is not where the examples are.
    with pytest.raises(ValueError, match=r"out_axes gives axis 1 .* shape \(1, 2\), not \(2, 1\)"):
        kernel(vmap_axes=(0, 1, {}))


def test_vmap_out_axes_structure_mismatch():
    with pytest.raises(ValueError, match="out_axes=.* does not match the structure of the output"):
        kernel(vmap_axes=(0, (0, 0), {}))


def test_vmap_kwargs_axes_unknown_kwarg():
    with pytest.raises(ValueError, match=r"kwargs_axes names \['foo'\]"):
        kernel(vmap_axes=(0, 0, {"foo": 0}))


@pytest.mark.parametrize("kwargs_axes", [0, [0], "scale"])
def test_vmap_kwargs_axes_not_a_dict(kwargs_axes):
    with pytest.raises(TypeError, match="kwargs_axes must be a dict"):
        kernel(mlp_kw, kwargs={"scale": jnp.ones(2)}, vmap_axes=(0, 0, kwargs_axes))


@pytest.mark.parametrize("vmap_axes", ["0", 0.0, True, (0, 0), [0, 0, {}]])
def test_vmap_axes_of_wrong_type(vmap_axes):
    with pytest.raises(TypeError, match="vmap_axes must be None, an int, or a triple"):
        kernel(vmap_axes=vmap_axes)


def test_vmap_in_axis_of_wrong_type():
    with pytest.raises(TypeError, match="vmap_axes: axes must be ints or None, got '0' for x1"):
        kernel(vmap_axes=("0", 0, {}))


# ----------------------------------------------------------------------------- caching


def counting(f):
    calls = []

    def g(params, x, **kwargs):
        calls.append(np.shape(x))
        return f(params, x, **kwargs)

    return g, calls


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "auto"])
@pytest.mark.parametrize("vmap_axes", [None, 0])
def test_kernel_fn_is_cached_per_signature(method, vmap_axes):
    f, calls = counting(mlp)
    kernel_fn = ntkc.ntk_fn(f, vmap_axes=vmap_axes, method=method)

    first = kernel_fn(X, None, PARAMS)
    traced = len(calls)
    assert traced > 0
    # Same shapes, new values: no argument checks, no retrace; f is not called at all.
    second = kernel_fn(2 * X, None, PARAMS)
    kernel_fn(X, None, jax.tree.map(lambda a: a + 1, PARAMS))
    assert len(calls) == traced
    assert not np.allclose(first, second)

    # A new shape is checked and traced once, and is correct.
    got = kernel_fn(X3, X, PARAMS)
    assert len(calls) > traced
    traced = len(calls)
    np.testing.assert_allclose(got, reference_ntk(mlp, X3, X, PARAMS), rtol=1e-10, atol=1e-12)
    kernel_fn(X3 + 1, X, PARAMS)
    assert len(calls) == traced
    # The first signature is still cached.
    kernel_fn(X, None, PARAMS)
    assert len(calls) == traced


def test_a_failed_check_is_not_cached():
    kernel_fn = ntkc.ntk_fn(mlp)
    with pytest.raises(ValueError, match="x1 of shape"):
        kernel_fn(jnp.ones((2, 4)), None, PARAMS)
    with pytest.raises(ValueError, match="x1 of shape"):
        kernel_fn(jnp.ones((2, 4)), None, PARAMS)
    np.testing.assert_allclose(kernel_fn(X, None, PARAMS), reference_ntk(mlp, X, None, PARAMS))
