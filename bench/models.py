"""The benchmark models, in plain JAX, float32: the paper's and neural-tangents' cases.

Each factory returns ``(f, params, x)`` with ``f(params, x) -> (N, O)``; weights and inputs come
from numpy's seeded generator, so every library sees the same numbers.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def _normal(rng, shape, std):
    return jnp.asarray(rng.standard_normal(shape) * std, jnp.float32)


def _dense_init(rng, n_in, n_out):
    return {"w": _normal(rng, (n_in, n_out), 1 / np.sqrt(n_in)), "b": jnp.zeros((n_out,), jnp.float32)}


def _row(v, ndim):
    """A vector broadcast explicitly over leading axes (no implicit rank promotion)."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _dense(p, x):
    return x @ p["w"] + _row(p["b"], x.ndim)


def mlp(n=32, outputs=10, width=512, depth=3, seed=0, inputs=784):
    """MLP inputs-width^depth-outputs, ReLU (784: the paper's fully-connected case, 932k params)."""
    rng = np.random.default_rng(seed)
    sizes = [inputs] + [width] * depth + [outputs]
    params = [_dense_init(rng, a, b) for a, b in zip(sizes[:-1], sizes[1:])]

    def f(params, x):
        for p in params[:-1]:
            x = jax.nn.relu(_dense(p, x))
        return _dense(params[-1], x)

    return f, params, _normal(rng, (n, inputs), 1.0)


def _conv(x, w, stride=1):
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)


def _conv_init(rng, k, cin, cout):
    return _normal(rng, (k, k, cin, cout), 1 / np.sqrt(k * k * cin))


def cnn(n=16, outputs=10, channels=64, image=32, seed=0):
    """3 x conv3x3 (channels), ReLU, global average pooling, dense (76k params at 64)."""
    rng = np.random.default_rng(seed)
    params = {
        "convs": [_conv_init(rng, 3, 3, channels)] + [_conv_init(rng, 3, channels, channels) for _ in range(2)],
        "biases": [jnp.zeros((channels,), jnp.float32) for _ in range(3)],
        "head": _dense_init(rng, channels, outputs),
    }

    def f(params, x):
        for w, b in zip(params["convs"], params["biases"]):
            x = jax.nn.relu(_conv(x, w) + _row(b, 4))
        return _dense(params["head"], x.mean((1, 2)))

    return f, params, _normal(rng, (n, image, image, 3), 1.0)


def wide_resnet(n=8, outputs=10, depth=10, k=1, image=32, seed=0):
    """WideResNet depth 10 (one block per group), width factor k, pre-activation, no batch norm."""
    rng = np.random.default_rng(seed)
    widths = [16 * k, 32 * k, 64 * k]
    blocks = (depth - 4) // 6
    params = {"stem": _conv_init(rng, 3, 3, 16), "groups": [], "head": _dense_init(rng, widths[-1], outputs)}
    cin = 16
    for g, width in enumerate(widths):
        group = []
        for b in range(blocks):
            block = {"c1": _conv_init(rng, 3, cin, width), "c2": _conv_init(rng, 3, width, width)}
            if cin != width:
                block["proj"] = _conv_init(rng, 1, cin, width)
            group.append(block)
            cin = width
        params["groups"].append(group)
    strides = [1, 2, 2]

    def f(params, x):
        x = _conv(x, params["stem"])
        for group, stride in zip(params["groups"], strides):
            for i, block in enumerate(group):
                s = stride if i == 0 else 1
                h = _conv(jax.nn.relu(x), block["c1"], s)
                h = _conv(jax.nn.relu(h), block["c2"])
                shortcut = _conv(x, block["proj"], s) if "proj" in block else x
                x = h + shortcut
        return _dense(params["head"], jax.nn.relu(x).mean((1, 2)))

    return f, params, _normal(rng, (n, image, image, 3), 1.0)


def _layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-6) * _row(p["g"], x.ndim) + _row(p["b"], x.ndim)


def vit(n=8, outputs=10, tokens=16, dim=64, heads=4, layers=2, seed=0):
    """ViT: patch embedding of 16 tokens, `layers` blocks with a fused qkv projection split by
    jnp.split (the multi-output `split` primitive), 4 heads, MLP 2x, mean pooling."""
    rng = np.random.default_rng(seed)
    patch = 48  # 4 x 4 x 3 pixels per token

    def ln():
        return {"g": jnp.ones((dim,), jnp.float32), "b": jnp.zeros((dim,), jnp.float32)}

    params = {
        "embed": _dense_init(rng, patch, dim),
        "pos": _normal(rng, (tokens, dim), 0.02),
        "blocks": [
            {"ln1": ln(), "qkv": _dense_init(rng, dim, 3 * dim), "proj": _dense_init(rng, dim, dim),
             "ln2": ln(), "fc1": _dense_init(rng, dim, 2 * dim), "fc2": _dense_init(rng, 2 * dim, dim)}
            for _ in range(layers)
        ],
        "head": _dense_init(rng, dim, outputs),
    }

    def attention(p, x):
        q, k, v = jnp.split(_dense(p["qkv"], x), 3, axis=-1)
        split = lambda t: t.reshape(t.shape[:-1] + (heads, dim // heads)).swapaxes(-2, -3)
        q, k, v = split(q), split(k), split(v)
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(dim // heads), axis=-1)
        out = (a @ v).swapaxes(-2, -3).reshape(x.shape)
        return _dense(p["proj"], out)

    def f(params, x):
        h = _dense(params["embed"], x) + params["pos"][None]
        for p in params["blocks"]:
            h = h + attention(p, _layer_norm(h, p["ln1"]))
            h = h + _dense(p["fc2"], jax.nn.gelu(_dense(p["fc1"], _layer_norm(h, p["ln2"]))))
        return _dense(params["head"], h.mean(-2))

    return f, params, _normal(rng, (n, tokens, patch), 1.0)


def mixer(n=8, outputs=10, tokens=16, dim=64, layers=2, seed=0):
    """MLP-Mixer: token-mixing and channel-mixing MLPs (2x), layer norm, mean pooling."""
    rng = np.random.default_rng(seed)
    patch = 48

    def ln():
        return {"g": jnp.ones((dim,), jnp.float32), "b": jnp.zeros((dim,), jnp.float32)}

    params = {
        "embed": _dense_init(rng, patch, dim),
        "blocks": [
            {"ln1": ln(), "tok1": _dense_init(rng, tokens, 2 * tokens), "tok2": _dense_init(rng, 2 * tokens, tokens),
             "ln2": ln(), "ch1": _dense_init(rng, dim, 2 * dim), "ch2": _dense_init(rng, 2 * dim, dim)}
            for _ in range(layers)
        ],
        "head": _dense_init(rng, dim, outputs),
    }

    def f(params, x):
        h = _dense(params["embed"], x)
        for p in params["blocks"]:
            t = _layer_norm(h, p["ln1"]).swapaxes(-1, -2)
            h = h + _dense(p["tok2"], jax.nn.gelu(_dense(p["tok1"], t))).swapaxes(-1, -2)
            h = h + _dense(p["ch2"], jax.nn.gelu(_dense(p["ch1"], _layer_norm(h, p["ln2"]))))
        return _dense(params["head"], h.mean(-2))

    return f, params, _normal(rng, (n, tokens, patch), 1.0)


def rnn(n=16, outputs=10, hidden=64, steps=8, features=8, width=1024, seed=0):
    """A tanh RNN (its weights enter a ``scan``: no structured rule) with a wide dense head:
    the case where computing each parameter leaf by its own method pays."""
    rng = np.random.default_rng(seed)
    params = {"u": _normal(rng, (hidden, hidden), hidden**-0.5),
              "w_in": _normal(rng, (features, hidden), features**-0.5),
              "w1": _normal(rng, (hidden, width), hidden**-0.5),
              "w2": _normal(rng, (width, outputs), width**-0.5)}

    def f(params, x):  # x: (N, steps, features)
        def step(h, xt):
            return jnp.tanh(h @ params["u"] + xt @ params["w_in"]), None

        h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
        h, _ = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
        return jnp.tanh(h @ params["w1"]) @ params["w2"]

    return f, params, _normal(rng, (n, steps, features), 1.0)


MODELS = {"mlp": mlp, "cnn": cnn, "wrn": wide_resnet, "vit": vit, "mixer": mixer, "rnn": rnn}
