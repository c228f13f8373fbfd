"""Random architectures (hypothesis): chains and small DAGs of supported primitives with shared
parameters, method="structured" against the float64 reference."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ntkc

WIDTH = 4
LAYERS = ["dense", "dense_shared", "dense_shared_T", "bias", "scale", "tanh", "relu",
          "split_concat", "slice_pad", "sum_broadcast", "cumsum", "rev", "residual",
          "scan_stacked", "scan_shared", "cond"]


def build(layers, seed):
    rng = np.random.default_rng(seed)
    params = {"shared": rng.standard_normal((WIDTH, WIDTH)) / 2}
    for i, kind in enumerate(layers):
        if kind == "dense":
            params[f"w{i}"] = rng.standard_normal((WIDTH, WIDTH)) / 2
        elif kind == "scan_stacked":
            params[f"w{i}"] = rng.standard_normal((3, WIDTH, WIDTH)) / 2
        elif kind in ("bias", "scale"):
            params[f"b{i}"] = rng.standard_normal((WIDTH,))
    params["out"] = rng.standard_normal((WIDTH, 2))

    def f(p, x):
        h = x
        for i, kind in enumerate(layers):
            if kind == "dense":
                h = h @ p[f"w{i}"]
            elif kind == "dense_shared":
                h = h @ p["shared"]
            elif kind == "dense_shared_T":
                h = h @ p["shared"].T
            elif kind == "bias":
                h = h + p[f"b{i}"][None, :]
            elif kind == "scale":
                h = h * p[f"b{i}"][None, :]
            elif kind == "tanh":
                h = jnp.tanh(h)
            elif kind == "relu":
                h = jax.nn.relu(h)
            elif kind == "split_concat":
                a, b = jnp.split(h, 2, axis=1)
                h = jnp.concatenate([jnp.sin(b), a], axis=1)
            elif kind == "slice_pad":
                h = jnp.pad(h[:, 1:], ((0, 0), (0, 1)))
            elif kind == "sum_broadcast":
                h = h + h.sum(1, keepdims=True)
            elif kind == "cumsum":
                h = jnp.cumsum(h, axis=1)
            elif kind == "rev":
                h = h[:, ::-1]
            elif kind == "residual":
                h = h + jnp.tanh(h @ p["shared"])
            elif kind == "scan_stacked":  # layers scanned over stacked weights
                h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, p[f"w{i}"])
            elif kind == "scan_shared":  # a cell's weights closed over, 2 steps, reversed
                h, ys = jax.lax.scan(lambda h, _: (jnp.sin(h @ p["shared"]), h), h, None,
                                     length=2, reverse=True)
                h = h + ys[0]
            elif kind == "cond":  # a branch on the parameters' values
                h = jax.lax.cond(p["shared"][0, 0] > 0, lambda h: h @ p["shared"],
                                 lambda h: jnp.tanh(h), h)
        return h @ p["out"] + (p["shared"].sum() * x[:, :2])

    return f, params


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layers=st.lists(st.sampled_from(LAYERS), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    trace=st.sampled_from([(-1,), ()]),
    vmap=st.sampled_from([0, None]),
)
def test_random_chain_matches_reference(layers, seed, trace, vmap):
    f, params = build(layers, seed)
    rng = np.random.default_rng(seed + 1)
    x1, x2 = rng.standard_normal((2, WIDTH)), rng.standard_normal((3, WIDTH))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ntkc.ntk_fn(f, trace, vmap_axes=vmap, method="structured")(x1, x2, params)
    ref = ntkc.testing.reference_ntk(f, x1, x2, params, trace)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-7, atol=1e-9)
