"""A zoo of tiny models for end-to-end NTK tests.

Each factory returns ``(f, params, x1, x2)`` with ``f(params, x, **kwargs) -> output``: float64
arrays, a deterministic init from a fixed key, ``x1`` holding 3 examples and ``x2`` holding 2 (so
that ``x2`` exercises unequal batch sizes). Every model treats examples independently along axis 0
of its inputs and outputs, so ``vmap_axes=0`` is valid for all of them.

``tests/conftest.py`` sets ``jax_numpy_rank_promotion="raise"``: broadcasts between arrays of
different ranks are written out explicitly.

Factories are cached (``functools.cache``): call them freely, but do not mutate what they return.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# "structured" joins this list when that method lands.
METHODS_UNDER_TEST = ["jacobian", "ntvp", "auto"]

N1, N2 = 3, 2
F64 = jnp.float64


def _keys(seed: int, n: int):
    return list(jax.random.split(jax.random.PRNGKey(seed), n))


def _normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, F64)


def _to64(tree):
    """Casts every floating leaf of ``tree`` to float64 (for library models that init in f32)."""
    return jax.tree.map(
        lambda a: a.astype(F64)
        if isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(a.dtype, jnp.floating)
        else a,
        tree,
    )


def _inputs(seed: int, shape):
    k1, k2 = _keys(seed, 2)
    return _normal(k1, (N1,) + tuple(shape)), _normal(k2, (N2,) + tuple(shape))


def _row(b):
    """A bias of shape (O,) as (1, O), for an explicit broadcast against (N, O)."""
    return b[None, :]


# ----------------------------------------------------------------------------- plain JAX


@functools.cache
def mlp():
    """tanh MLP with biases, (N, 4) -> (N, 3)."""
    k = _keys(0, 6)
    params = {
        "w1": _normal(k[0], (4, 8), 0.5), "b1": _normal(k[1], (8,), 0.1),
        "w2": _normal(k[2], (8, 8), 0.35), "b2": _normal(k[3], (8,), 0.1),
        "w3": _normal(k[4], (8, 3), 0.35), "b3": _normal(k[5], (3,), 0.1),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["w1"] + _row(p["b1"]))
        h = jnp.tanh(h @ p["w2"] + _row(p["b2"]))
        return h @ p["w3"] + _row(p["b3"])

    return (f, params) + _inputs(100, (4,))


@functools.cache
def cnn():
    """NHWC conv (stride 2), relu, conv, relu, global average pool, dense: (N, 8, 8, 2) -> (N, 3)."""
    k = _keys(1, 6)
    params = {
        "c1": _normal(k[0], (3, 3, 2, 4), 0.3), "cb1": _normal(k[1], (4,), 0.1),
        "c2": _normal(k[2], (3, 3, 4, 4), 0.3), "cb2": _normal(k[3], (4,), 0.1),
        "w": _normal(k[4], (4, 3), 0.5), "b": _normal(k[5], (3,), 0.1),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def f(p, x):
        h = jax.lax.conv_general_dilated(x, p["c1"], (2, 2), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h + p["cb1"][None, None, None, :])
        h = jax.lax.conv_general_dilated(h, p["c2"], (1, 1), "VALID", dimension_numbers=dn)
        h = jax.nn.relu(h + p["cb2"][None, None, None, :])
        h = jnp.mean(h, axis=(1, 2))
        return h @ p["w"] + _row(p["b"])

    return (f, params) + _inputs(101, (8, 8, 2))


T, D, HEADS = 4, 8, 2


@functools.cache
def attention():
    """Two-head self-attention over (N, T=4, D=8) tokens with a residual, layer-norm-free, then a
    per-token head: output (N, T, 3)."""
    k = _keys(2, 6)
    params = {
        "wq": _normal(k[0], (D, D), D ** -0.5), "wk": _normal(k[1], (D, D), D ** -0.5),
        "wv": _normal(k[2], (D, D), D ** -0.5), "wo": _normal(k[3], (D, D), D ** -0.5),
        "head": _normal(k[4], (D, 3), D ** -0.5), "bias": _normal(k[5], (3,), 0.1),
    }
    dh = D // HEADS

    def f(p, x):
        n = x.shape[0]
        split = lambda a: a.reshape(n, T, HEADS, dh)
        q, k_, v = split(x @ p["wq"]), split(x @ p["wk"]), split(x @ p["wv"])
        logits = jnp.einsum("nthd,nshd->nhts", q, k_) / np.sqrt(dh)
        att = jax.nn.softmax(logits, axis=-1)
        h = jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, T, D)
        h = x + h @ p["wo"]
        return jnp.tanh(h) @ p["head"] + p["bias"][None, None, :]

    return (f, params) + _inputs(102, (T, D))


@functools.cache
def weight_sharing():
    """One matrix W used three times: two layers of equal width, then a slice of it as the head."""
    k = _keys(3, 2)
    params = {"w": _normal(k[0], (6, 6), 0.4), "b": _normal(k[1], (6,), 0.1)}

    def f(p, x):
        h = jnp.tanh(x @ p["w"] + _row(p["b"]))
        h = jnp.tanh(h @ p["w"])
        return h @ p["w"][:, :3]

    return (f, params) + _inputs(103, (6,))


@functools.cache
def pytree_output():
    """Returns a dict of two leaves of different ranks: (N, 3) and (N, 2, 2)."""
    k = _keys(4, 4)
    params = {
        "w": _normal(k[0], (4, 6), 0.5), "b": _normal(k[1], (6,), 0.1),
        "u": _normal(k[2], (6, 3), 0.4), "v": _normal(k[3], (6, 4), 0.4),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["w"] + _row(p["b"]))
        return {"logits": h @ p["u"], "grid": (h @ p["v"]).reshape(x.shape[0], 2, 2)}

    return (f, params) + _inputs(104, (4,))


@functools.cache
def nested_params():
    """Params as a dict holding a list of layer tuples and a nested dict."""
    k = _keys(5, 6)
    params = {
        "layers": [
            (_normal(k[0], (4, 5), 0.5), _normal(k[1], (5,), 0.1)),
            (_normal(k[2], (5, 5), 0.4), _normal(k[3], (5,), 0.1)),
        ],
        "head": {"w": [_normal(k[4], (5, 3), 0.4)], "b": (_normal(k[5], (3,), 0.1),)},
    }

    def f(p, x):
        h = x
        for w, b in p["layers"]:
            h = jnp.sin(h @ w + _row(b))
        return h @ p["head"]["w"][0] + _row(p["head"]["b"][0])

    return (f, params) + _inputs(105, (4,))


# ----------------------------------------------------------------------------- with kwargs


@functools.cache
def mlp_kwargs():
    """MLP with keyword arguments: ``scale`` (a static float), ``train`` (a static bool) and
    ``rng`` (a key for a dropout-like feature mask of shape (8,), independent of the batch size,
    so that the same key gives the same mask per example and per batch). (N, 4) -> (N, 3)."""
    f0, params, x1, x2 = mlp()

    def f(p, x, scale=1.0, train=False, rng=None):
        h = jnp.tanh(x @ p["w1"] + _row(p["b1"]))
        if rng is not None:
            keep = jax.random.bernoulli(rng, 0.5, (h.shape[-1],)).astype(h.dtype)
            h = h * keep[None, :] * 2.0
        if train:
            h = h + 0.5 * jnp.sin(h)
        h = jnp.tanh(h @ p["w2"] + _row(p["b2"]))
        return scale * (h @ p["w3"] + _row(p["b3"]))

    return f, params, x1, x2


@functools.cache
def pytree_input():
    """A dict input with different batch axes, ``{'a': (N, 4), 'b': (5, N)}``, a batched keyword
    argument ``w`` of shape (N,), and a tuple output ``((N, 3), (2, N))`` whose batch axes differ.

    Its vmap triple is ``({'a': 0, 'b': 1}, (0, 1), {'w': 0})``.
    """
    k = _keys(6, 8)
    params = {
        "wa": _normal(k[0], (4, 6), 0.5), "wb": _normal(k[1], (5, 6), 0.4),
        "u": _normal(k[2], (6, 3), 0.4), "v": _normal(k[3], (2, 6), 0.4),
    }

    def f(p, x, w=None):
        h = jnp.tanh(x["a"] @ p["wa"] + x["b"].T @ p["wb"])  # (N, 6)
        if w is not None:
            h = h * w[:, None]
        return h @ p["u"], p["v"] @ h.T  # (N, 3), (2, N)

    def inputs(key, n):
        ka, kb = jax.random.split(key)
        return {"a": _normal(ka, (n, 4)), "b": _normal(kb, (5, n))}

    return f, params, inputs(k[4], N1), inputs(k[5], N2)


PYTREE_INPUT_VMAP_AXES = ({"a": 0, "b": 1}, (0, 1), {"w": 0})


def pytree_input_weights():
    """The batched ``w`` kwarg for :func:`pytree_input`: one array per side."""
    return jnp.array([0.5, 1.5, -1.0], F64), jnp.array([2.0, 0.25], F64)


# ----------------------------------------------------------------------------- libraries


@functools.cache
def flax_linen():
    """Flax Linen: Conv (stride 2) -> relu -> mean pool -> Dense: (N, 8, 8, 2) -> (N, 3)."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), strides=(2, 2), param_dtype=F64, dtype=F64)(x)
            x = nn.relu(x)
            x = jnp.mean(x, axis=(1, 2))
            x = nn.tanh(nn.Dense(6, param_dtype=F64, dtype=F64)(x))
            return nn.Dense(3, param_dtype=F64, dtype=F64)(x)

    model = Net()
    x1, x2 = _inputs(107, (8, 8, 2))
    params = _to64(model.init(jax.random.PRNGKey(7), x1))

    def f(p, x):
        return model.apply(p, x)

    return f, params, x1, x2


@functools.cache
def flax_nnx():
    """Flax NNX MLP; ``params`` is the ``nnx.State`` from ``nnx.split``: (N, 4) -> (N, 3)."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs, param_dtype=F64, dtype=F64)
            self.l2 = nnx.Linear(8, 3, rngs=rngs, param_dtype=F64, dtype=F64)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    graphdef, params = nnx.split(Net(nnx.Rngs(8)), nnx.Param)
    x1, x2 = _inputs(108, (4,))

    def f(p, x):
        return nnx.merge(graphdef, p)(x)

    return f, params, x1, x2


@functools.cache
def equinox_mlp():
    """Equinox MLP applied per example with vmap; params/static from ``eqx.partition``."""
    import equinox as eqx

    net = eqx.nn.MLP(4, 3, width_size=8, depth=2, activation=jnp.tanh,
                     key=jax.random.PRNGKey(9))
    net = _to64(net)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    x1, x2 = _inputs(109, (4,))

    def f(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return f, params, x1, x2


@functools.cache
def haiku_cnn():
    """Haiku: Conv2D (stride 2) -> relu -> flatten -> Linear: (N, 8, 8, 2) -> (N, 3)."""
    import haiku as hk

    def forward(x):
        h = jax.nn.relu(hk.Conv2D(4, 3, stride=2)(x))
        h = h.reshape(h.shape[0], -1)
        return hk.Linear(3)(jnp.tanh(hk.Linear(6)(h)))

    net = hk.transform(forward)
    x1, x2 = _inputs(110, (8, 8, 2))
    params = _to64(net.init(jax.random.PRNGKey(10), x1))

    def f(p, x):
        return net.apply(p, None, x)

    return f, params, x1, x2


MODELS = {
    "mlp": mlp,
    "cnn": cnn,
    "attention": attention,
    "weight_sharing": weight_sharing,
    "pytree_output": pytree_output,
    "nested_params": nested_params,
    "flax_linen": flax_linen,
    "flax_nnx": flax_nnx,
    "equinox": equinox_mlp,
    "haiku": haiku_cnn,
}

# Models that need no third-party library (safe on the oldest supported JAX in CI).
PLAIN_JAX_MODELS = ("mlp", "cnn", "attention", "weight_sharing", "pytree_output", "nested_params")
