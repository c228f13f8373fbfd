"""The paper's models as their users write them: Flax Linen modules, framework initialisers,
BatchNorm in eval mode (``use_running_average=True``), the params differentiated and the
batch_stats closed over.

Each factory returns ``(f, params, x1, x2)`` with ``f(params, x) -> (N, O)``, float32; ``x1`` and
``x2`` are distinct inputs of ``n`` examples each (seeded).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------- the modules

class FCN(nn.Module):
    width: int = 2048
    depth: int = 3
    outputs: int = 8

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.outputs)(x)


def _shortcut(residual, y, strides, norm):
    """relu(residual + y), the residual projected (1x1 conv, norm) where the shapes differ;
    called inside a block's compact method, so the submodules are the block's."""
    if residual.shape != y.shape:
        residual = nn.Conv(y.shape[-1], (1, 1), strides, use_bias=False)(residual)
        residual = norm()(residual)
    return nn.relu(residual + y)


class ResNetBlock(nn.Module):
    """ResNet's basic block (flax/examples/imagenet)."""
    filters: int
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        norm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9)
        residual = x
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros_init())(y)
        return _shortcut(residual, y, self.strides, norm)


class BottleneckResNetBlock(nn.Module):
    filters: int
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        norm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9)
        residual = x
        y = nn.Conv(self.filters, (1, 1), use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(y)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters * 4, (1, 1), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros_init())(y)
        return _shortcut(residual, y, self.strides, norm)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: type
    outputs: int = 1000
    width: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, momentum=0.9)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.width * 2**i, strides=strides)(x)
        return nn.Dense(self.outputs)(jnp.mean(x, axis=(1, 2)))


class WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis), no dropout."""
    filters: int
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        norm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9)
        o = nn.relu(norm()(x))
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(o)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        if x.shape != y.shape:
            x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False)(o)
        return x + y


class WideResNet(nn.Module):
    depth: int = 28
    k: int = 10
    outputs: int = 10

    @nn.compact
    def __call__(self, x):
        blocks = (self.depth - 4) // 6
        x = nn.Conv(16, (3, 3), use_bias=False)(x)
        for g, width in enumerate((16 * self.k, 32 * self.k, 64 * self.k)):
            for b in range(blocks):
                x = WideBlock(width, (2, 2) if g > 0 and b == 0 else (1, 1))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, momentum=0.9)(x))
        return nn.Dense(self.outputs)(jnp.mean(x, axis=(1, 2)))


class EncoderBlock(nn.Module):
    dim: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(self.mlp)(y)
        return x + nn.Dense(self.dim)(nn.gelu(y))


class ViT(nn.Module):
    """ViT (Dosovitskiy et al.): patch embedding, class token, learned positions, pre-LN."""
    patch: int = 16
    dim: int = 384
    layers: int = 12
    heads: int = 6
    mlp: int = 1536
    outputs: int = 1000

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (self.patch, self.patch), (self.patch, self.patch), padding="VALID")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, h * w + 1, c))
        for _ in range(self.layers):
            x = EncoderBlock(self.dim, self.heads, self.mlp)(x)
        return nn.Dense(self.outputs)(nn.LayerNorm()(x)[:, 0])


# ----------------------------------------------------------------------------- factories

def _build(module, n, shape, seed=0):
    rng = np.random.default_rng(seed)
    x1 = jnp.asarray(rng.standard_normal((n, *shape)), jnp.float32)
    x2 = jnp.asarray(rng.standard_normal((n, *shape)), jnp.float32)
    variables = module.init(jax.random.key(seed), x1[:1])
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def f(params, x):  # params differentiated, batch_stats closed over (eval mode)
        return module.apply({"params": params, **rest}, x)

    return f, params, x1, x2


def fcn(n=16, outputs=8, width=2048, depth=3, inputs=3072, seed=0):
    return _build(FCN(width, depth, outputs), n, (inputs,), seed)


def resnet18(n=8, outputs=8, image=224, seed=0):
    return _build(ResNet((2, 2, 2, 2), ResNetBlock, outputs), n, (image, image, 3), seed)


def resnet50(n=8, outputs=8, image=224, seed=0):
    return _build(ResNet((3, 4, 6, 3), BottleneckResNetBlock, outputs), n, (image, image, 3), seed)


def wrn28_10(n=8, outputs=10, image=32, seed=0):
    return _build(WideResNet(28, 10, outputs), n, (image, image, 3), seed)


def vit_s16(n=4, outputs=8, image=224, seed=0):
    return _build(ViT(outputs=outputs), n, (image, image, 3), seed)


MODELS = {"fcn": fcn, "resnet18": resnet18, "resnet50": resnet50, "wrn28_10": wrn28_10,
          "vit_s16": vit_s16}
