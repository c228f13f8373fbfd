"""ntkc._slicing: examples sliced along any batch axis, on device arrays, tracers,
ShapeDtypeStructs and host numpy / memory-mapped data (sliced on the host, never copied whole)."""

import jax
import jax.numpy as jnp
import numpy as np

from ntkc import _slicing

R = np.random.default_rng(0)


def test_take_along_each_leafs_axis_keeps_unbatched_leaves():
    x = (R.standard_normal((3, 7)), jnp.asarray(R.standard_normal((7, 2))), 2.5)
    got = _slicing.take(x, [1, 0, None], 2, 5)
    np.testing.assert_array_equal(got[0], x[0][:, 2:5])
    np.testing.assert_array_equal(got[1], x[1][2:5])
    assert got[2] == 2.5
    assert isinstance(got[1], jax.Array)
    # one axis for every leaf; stop past the end is clipped
    got = _slicing.take({"a": x[1]}, 0, 5, 100)
    assert got["a"].shape == (2, 2)


def test_take_of_host_data_stays_on_the_host(tmp_path):
    data = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                     shape=(10, 4))
    data[:] = R.standard_normal((10, 4))
    got = _slicing.take([data], 0, 3, 6)[0]
    assert isinstance(got, np.ndarray) and not isinstance(got, jax.Array)
    assert np.shares_memory(got, data)  # a view of the file, not a copy
    np.testing.assert_array_equal(got, data[3:6])
    got = _slicing.take(data, 1, 1, 3)
    assert np.shares_memory(got, data) and got.shape == (10, 2)


def test_take_of_abstract_and_traced_inputs():
    s = jax.ShapeDtypeStruct((4, 9, 2), jnp.float32)
    assert _slicing.take(s, 1, 3, 20) == jax.ShapeDtypeStruct((4, 6, 2), jnp.float32)
    x = jnp.arange(12.0).reshape(3, 4)
    got = jax.jit(lambda x: _slicing.take(x, 1, 1, 3))(x)
    np.testing.assert_array_equal(got, x[:, 1:3])


def test_like_and_padded_block():
    x = {"a": R.standard_normal((5, 3)), "b": jnp.arange(5)}
    assert _slicing.like(x, 2) == {"a": jax.ShapeDtypeStruct((2, 3), np.float64),
                                   "b": jax.ShapeDtypeStruct((2,), x["b"].dtype)}
    block = _slicing.padded_block(x, 3, 4)  # examples 3, 4, then 4 repeated
    np.testing.assert_array_equal(block["a"], x["a"][[3, 4, 4, 4]])
    np.testing.assert_array_equal(block["b"], [3, 4, 4, 4])
    assert all(isinstance(l, np.ndarray) for l in jax.tree.leaves(block))
    np.testing.assert_array_equal(_slicing.padded_block(x, 0, 2)["a"], x["a"][:2])
