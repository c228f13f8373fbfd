"""A zoo of tiny models for end-to-end NTK tests.

Each factory returns ``(f, params, x1, x2)`` with ``f(params, x, **kwargs) -> output``: float64
arrays, a deterministic init from a fixed ``jax.random`` key, ``x1`` holding 3 examples and ``x2``
holding 2 (so that ``x2`` exercises unequal batch sizes). Every model in ``MODELS`` treats examples
independently along axis 0 of its inputs and outputs, so ``vmap_axes=0`` is valid for all of them.
Library models (Flax Linen and NNX, Equinox, Haiku) import their library inside the factory, so
this module imports with plain JAX only.

``tests/conftest.py`` sets ``jax_numpy_rank_promotion="raise"``: broadcasts between arrays of
different ranks are written out explicitly.

Factories are cached (``functools.cache``): call them freely, but do not mutate what they return.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# "structured" joins this list when that method lands.
METHODS_UNDER_TEST = ["jacobian", "ntvp", "structured", "auto"]

N1, N2 = 3, 2
F64 = jnp.float64


_POOL_SIZE = 2048


@functools.cache
def _pool(seed: int) -> np.ndarray:
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (_POOL_SIZE,), F64))


class _Rand:
    """Standard normals from a fixed ``jax.random`` key, handed out in consecutive chunks of one
    draw of fixed size: every model shares one compilation of the generator (an eager
    ``jax.random.normal`` per shape costs a compilation each, seconds per model on CPU)."""

    def __init__(self, seed: int):
        self.flat, self.pos = _pool(seed), 0

    def __call__(self, shape, scale=1.0):
        n = math.prod(shape)
        assert self.pos + n <= _POOL_SIZE, "model too large for the draw pool"
        chunk = self.flat[self.pos : self.pos + n].reshape(shape) * scale
        self.pos += n
        return jnp.asarray(chunk, F64)

    def fill(self, abstract):
        """Replaces every ``jax.ShapeDtypeStruct`` leaf by a float64 draw: weights scaled by
        1/sqrt(product of all but their last axis), vectors (biases) by 0.1."""

        def one(a):
            if not isinstance(a, jax.ShapeDtypeStruct):
                return a
            scale = 0.1 if a.ndim <= 1 else math.prod(a.shape[:-1]) ** -0.5
            return self(a.shape, scale)

        return jax.tree.map(one, abstract)

    def inputs(self, shape):
        """``x1`` with N1 examples and ``x2`` with N2, of per-example ``shape``."""
        return self((N1,) + tuple(shape)), self((N2,) + tuple(shape))


def _row(b):
    """A bias of shape (O,) as (1, O), for an explicit broadcast against (N, O)."""
    return b[None, :]


# ----------------------------------------------------------------------------- plain JAX


@functools.cache
def mlp():
    """tanh MLP with biases, (N, 4) -> (N, 3)."""
    r = _Rand(0)
    params = {
        "w1": r((4, 8), 0.5), "b1": r((8,), 0.1),
        "w2": r((8, 8), 0.35), "b2": r((8,), 0.1),
        "w3": r((8, 3), 0.35), "b3": r((3,), 0.1),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["w1"] + _row(p["b1"]))
        h = jnp.tanh(h @ p["w2"] + _row(p["b2"]))
        return h @ p["w3"] + _row(p["b3"])

    return (f, params) + r.inputs((4,))


@functools.cache
def cnn():
    """NHWC conv (stride 2), relu, conv, relu, global average pool, dense:
    (N, 8, 8, 2) -> (N, 3)."""
    r = _Rand(1)
    params = {
        "c1": r((3, 3, 2, 4), 0.3), "cb1": r((4,), 0.1),
        "c2": r((3, 3, 4, 4), 0.3), "cb2": r((4,), 0.1),
        "w": r((4, 3), 0.5), "b": r((3,), 0.1),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def f(p, x):
        h = jax.lax.conv_general_dilated(x, p["c1"], (2, 2), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h + p["cb1"][None, None, None, :])
        h = jax.lax.conv_general_dilated(h, p["c2"], (1, 1), "VALID", dimension_numbers=dn)
        h = jax.nn.relu(h + p["cb2"][None, None, None, :])
        h = jnp.mean(h, axis=(1, 2))
        return h @ p["w"] + _row(p["b"])

    return (f, params) + r.inputs((8, 8, 2))


T, D = 4, 8


@functools.cache
def attention():
    """Single-head self-attention over (N, T=4, D=8) tokens with a residual, then a per-token
    head: output (N, T, 3)."""
    r = _Rand(2)
    params = {
        "wq": r((D, D), D ** -0.5), "wk": r((D, D), D ** -0.5),
        "wv": r((D, D), D ** -0.5),
        "head": r((D, 3), D ** -0.5), "bias": r((3,), 0.1),
    }

    def f(p, x):
        q, k_, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
        att = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k_) / np.sqrt(D), axis=-1)
        h = x + jnp.einsum("nts,nsd->ntd", att, v)
        return jnp.tanh(h) @ p["head"] + p["bias"][None, None, :]

    return (f, params) + r.inputs((T, D))


@functools.cache
def weight_sharing():
    """One matrix W used three times: two layers of equal width, then a slice of it as the head."""
    r = _Rand(3)
    params = {"w": r((6, 6), 0.4), "b": r((6,), 0.1)}

    def f(p, x):
        h = jnp.tanh(x @ p["w"] + _row(p["b"]))
        h = jnp.tanh(h @ p["w"])
        return h @ p["w"][:, :3]

    return (f, params) + r.inputs((6,))


@functools.cache
def pytree_output():
    """Returns a dict of two leaves of different ranks: (N, 3) and (N, 2, 2)."""
    r = _Rand(4)
    params = {
        "w": r((4, 6), 0.5), "b": r((6,), 0.1),
        "u": r((6, 3), 0.4), "v": r((6, 4), 0.4),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["w"] + _row(p["b"]))
        return {"logits": h @ p["u"], "grid": (h @ p["v"]).reshape(x.shape[0], 2, 2)}

    return (f, params) + r.inputs((4,))


@functools.cache
def nested_params():
    """Params as a dict holding a list of layer tuples and a nested dict."""
    r = _Rand(5)
    params = {
        "layers": [
            (r((4, 5), 0.5), r((5,), 0.1)),
            (r((5, 5), 0.4), r((5,), 0.1)),
        ],
        "head": {"w": [r((5, 3), 0.4)], "b": (r((3,), 0.1),)},
    }

    def f(p, x):
        h = x
        for w, b in p["layers"]:
            h = jnp.sin(h @ w + _row(b))
        return h @ p["head"]["w"][0] + _row(p["head"]["b"][0])

    return (f, params) + r.inputs((4,))


# ----------------------------------------------------------------------------- with kwargs


@functools.cache
def mlp_kwargs():
    """MLP with keyword arguments: ``scale`` (a static float), ``train`` (a static bool) and
    ``rng`` (a key for a dropout-like feature mask of shape (8,), independent of the batch size,
    so that the same key gives the same mask per example and per batch). (N, 4) -> (N, 3)."""
    _, params, x1, x2 = mlp()

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
    r = _Rand(6)
    params = {
        "wa": r((4, 6), 0.5), "wb": r((5, 6), 0.4),
        "u": r((6, 3), 0.4), "v": r((2, 6), 0.4),
    }

    def f(p, x, w=None):
        h = jnp.tanh(x["a"] @ p["wa"] + x["b"].T @ p["wb"])  # (N, 6)
        if w is not None:
            h = h * w[:, None]
        return h @ p["u"], p["v"] @ h.T  # (N, 3), (2, N)

    def inputs(n):
        return {"a": r((n, 4)), "b": r((5, n))}

    return f, params, inputs(N1), inputs(N2)


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
    r = _Rand(7)
    x1, x2 = r.inputs((8, 8, 2))
    # Shapes from the library's init (traced, not run), values from the shared draw.
    params = r.fill(jax.eval_shape(model.init, jax.random.PRNGKey(7), x1))

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

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Net(nnx.Rngs(8))), nnx.Param)
    r = _Rand(8)
    params = r.fill(abstract)
    x1, x2 = r.inputs((4,))

    def f(p, x):
        return nnx.merge(graphdef, p)(x)

    return f, params, x1, x2


@functools.cache
def equinox_mlp():
    """Equinox MLP applied per example with vmap; params/static from ``eqx.partition``."""
    import equinox as eqx

    abstract = eqx.filter_eval_shape(eqx.nn.MLP, 4, 3, width_size=8, depth=2,
                                     activation=jnp.tanh, key=jax.random.PRNGKey(9))
    r = _Rand(9)
    net = r.fill(abstract)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    x1, x2 = r.inputs((4,))

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
    r = _Rand(10)
    x1, x2 = r.inputs((8, 8, 2))
    params = r.fill(jax.eval_shape(net.init, jax.random.PRNGKey(10), x1))

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
