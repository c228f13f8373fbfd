"""PyTorch ports of the benchmark models in ``bench/models.py``, for ``bench/compare_torch.py``.

Imported only inside the ``.venv-torch`` environment (no JAX there). ``build(name, arrays, x)``
takes the JAX model's parameters exported as numpy arrays, keyed by
``jax.tree_util.keystr`` of their path in the JAX pytree (``"['convs'][0]"``, ``"[2]['w']"``),
and the JAX input, and returns ``(module, x)`` with the same weights and the same numbers:

- dense ``w`` is ``(in, out)`` in JAX and ``nn.Linear.weight`` is ``(out, in)``: transposed;
- convolution kernels are HWIO in JAX and OIHW in torch: ``transpose(3, 2, 0, 1)``;
- images are NHWC in JAX and NCHW in torch: ``permute(0, 3, 1, 2)``; the output is ``(N, O)``
  either way (global average pooling comes before the dense head);
- JAX's ``"SAME"`` padding is ``floor(total / 2)`` before and the rest after, which for a strided
  3x3 convolution on an even size is asymmetric (0 before, 1 after): ``SameConv2d`` pads
  explicitly where the two sides differ;
- ``jax.nn.gelu`` is the tanh approximation by default: ``F.gelu(approximate="tanh")``;
- the layer norm in ``bench/models.py`` is ``nn.LayerNorm(eps=1e-6)`` (biased variance, epsilon
  inside the square root).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _set(param: nn.Parameter, value) -> None:
    value = _t(value)
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value)


def _dense(layer: nn.Linear, arrays: dict, key: str) -> None:
    _set(layer.weight, arrays[f"{key}['w']"].T)
    _set(layer.bias, arrays[f"{key}['b']"])


def _conv_weight(hwio) -> np.ndarray:
    return np.transpose(hwio, (3, 2, 0, 1))


def _ln(layer: nn.LayerNorm, arrays: dict, key: str) -> None:
    _set(layer.weight, arrays[f"{key}['g']"])
    _set(layer.bias, arrays[f"{key}['b']"])


# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def mlp(arrays: dict) -> nn.Module:
    count = len({k.split("]")[0] for k in arrays})
    sizes = [arrays[f"[{i}]['w']"].shape[0] for i in range(count)] + [arrays[f"[{count - 1}]['w']"].shape[1]]
    net = MLP(sizes)
    for i, layer in enumerate(net.layers):
        _dense(layer, arrays, f"[{i}]")
    return net


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with JAX's ``"SAME"`` padding (asymmetric where the total is odd), no bias
    unless asked."""

    def __init__(self, cin, cout, k, stride=1, bias=False):
        super().__init__(cin, cout, k, stride=stride, padding=0, bias=bias)

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class CNN(nn.Module):
    def __init__(self, channels, outputs):
        super().__init__()
        self.convs = nn.ModuleList(SameConv2d(c, channels, 3, bias=True) for c in (3, channels, channels))
        self.head = nn.Linear(channels, outputs)

    def forward(self, x):  # NCHW
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.mean((-2, -1)))


def cnn(arrays: dict) -> nn.Module:
    channels = arrays["['convs'][0]"].shape[-1]
    net = CNN(channels, arrays["['head']['w']"].shape[1])
    for i, conv in enumerate(net.convs):
        _set(conv.weight, _conv_weight(arrays[f"['convs'][{i}]"]))
        _set(conv.bias, arrays[f"['biases'][{i}]"])
    _dense(net.head, arrays, "['head']")
    return net


class Block(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.stride = stride
        self.c1 = SameConv2d(cin, width, 3, stride)
        self.c2 = SameConv2d(width, width, 3)
        self.proj = SameConv2d(cin, width, 1, stride) if cin != width else None

    def forward(self, x):
        h = self.c1(F.relu(x))
        h = self.c2(F.relu(h))
        return h + (self.proj(x) if self.proj is not None else x)


class WideResNet(nn.Module):
    def __init__(self, widths, blocks, outputs, strides=(1, 2, 2)):
        super().__init__()
        self.stem = SameConv2d(3, 16, 3)
        groups, cin = [], 16
        for width, stride in zip(widths, strides):
            group = []
            for b in range(blocks):
                group.append(Block(cin, width, stride if b == 0 else 1))
                cin = width
            groups.append(nn.ModuleList(group))
        self.groups = nn.ModuleList(groups)
        self.head = nn.Linear(widths[-1], outputs)

    def forward(self, x):  # NCHW
        x = self.stem(x)
        for group in self.groups:
            for block in group:
                x = block(x)
        return self.head(F.relu(x).mean((-2, -1)))


def wide_resnet(arrays: dict) -> nn.Module:
    n_groups = len({k.split("]")[1] for k in arrays if k.startswith("['groups']")})
    blocks = len({k.split("]")[2] for k in arrays if k.startswith("['groups'][0]")})
    widths = [arrays[f"['groups'][{g}][0]['c1']"].shape[-1] for g in range(n_groups)]
    net = WideResNet(widths, blocks, arrays["['head']['w']"].shape[1])
    _set(net.stem.weight, _conv_weight(arrays["['stem']"]))
    for g, group in enumerate(net.groups):
        for b, block in enumerate(group):
            key = f"['groups'][{g}][{b}]"
            _set(block.c1.weight, _conv_weight(arrays[f"{key}['c1']"]))
            _set(block.c2.weight, _conv_weight(arrays[f"{key}['c2']"]))
            if block.proj is not None:
                _set(block.proj.weight, _conv_weight(arrays[f"{key}['proj']"]))
            elif f"{key}['proj']" in arrays:
                raise ValueError(f"unexpected projection at {key}")
    _dense(net.head, arrays, "['head']")
    return net


def _gelu(x):
    return F.gelu(x, approximate="tanh")


class ViTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def attention(self, x):
        dim = x.shape[-1]
        dh = dim // self.heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        split = lambda t: t.reshape(t.shape[:-1] + (self.heads, dh)).swapaxes(-2, -3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax(q @ k.swapaxes(-1, -2) / math.sqrt(dh), dim=-1)
        return self.proj((a @ v).swapaxes(-2, -3).reshape(x.shape))

    def forward(self, h):
        h = h + self.attention(self.ln1(h))
        return h + self.fc2(_gelu(self.fc1(self.ln2(h))))


class ViT(nn.Module):
    def __init__(self, patch, tokens, dim, heads, layers, outputs):
        super().__init__()
        self.embed = nn.Linear(patch, dim)
        self.pos = nn.Parameter(torch.zeros(tokens, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, outputs)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(-2))


def _load_blocks(net, arrays: dict, dense_names) -> None:
    """Embedding, blocks (two layer norms and the named dense layers each) and head of a ViT or
    an MLP-Mixer, from the JAX model's exported parameters."""
    _dense(net.embed, arrays, "['embed']")
    for i, block in enumerate(net.blocks):
        key = f"['blocks'][{i}]"
        _ln(block.ln1, arrays, f"{key}['ln1']")
        _ln(block.ln2, arrays, f"{key}['ln2']")
        for name in dense_names:
            _dense(getattr(block, name), arrays, f"{key}['{name}']")
    _dense(net.head, arrays, "['head']")


def vit(arrays: dict, heads: int = 4) -> nn.Module:
    layers = len({k.split("]")[1] for k in arrays if k.startswith("['blocks']")})
    patch, dim = arrays["['embed']['w']"].shape
    tokens = arrays["['pos']"].shape[0]
    net = ViT(patch, tokens, dim, heads, layers, arrays["['head']['w']"].shape[1])
    _set(net.pos, arrays["['pos']"])
    _load_blocks(net, arrays, ("qkv", "proj", "fc1", "fc2"))
    return net


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.tok1, self.tok2 = nn.Linear(tokens, 2 * tokens), nn.Linear(2 * tokens, tokens)
        self.ch1, self.ch2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, h):
        t = self.ln1(h).swapaxes(-1, -2)
        h = h + self.tok2(_gelu(self.tok1(t))).swapaxes(-1, -2)
        return h + self.ch2(_gelu(self.ch1(self.ln2(h))))


class Mixer(nn.Module):
    def __init__(self, patch, tokens, dim, layers, outputs):
        super().__init__()
        self.embed = nn.Linear(patch, dim)
        self.blocks = nn.ModuleList(MixerBlock(tokens, dim) for _ in range(layers))
        self.head = nn.Linear(dim, outputs)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(-2))


def mixer(arrays: dict) -> nn.Module:
    layers = len({k.split("]")[1] for k in arrays if k.startswith("['blocks']")})
    patch, dim = arrays["['embed']['w']"].shape
    tokens = arrays["['blocks'][0]['tok1']['w']"].shape[0]
    net = Mixer(patch, tokens, dim, layers, arrays["['head']['w']"].shape[1])
    _load_blocks(net, arrays, ("tok1", "tok2", "ch1", "ch2"))
    return net


BUILDERS = {"mlp": mlp, "cnn": cnn, "wrn": wide_resnet, "vit": vit, "mixer": mixer}
IMAGES = ("cnn", "wrn")  # NHWC in JAX, NCHW here


def build(name: str, arrays: dict, x):
    """(module, x) in torch, float32, from the JAX model's exported parameters and input."""
    net = BUILDERS[name](arrays).float().eval()
    n_exported = sum(int(np.size(a)) for a in arrays.values())
    n_torch = sum(p.numel() for p in net.parameters())
    if n_exported != n_torch:
        raise ValueError(f"{name}: {n_torch} parameters in torch, {n_exported} exported from JAX")
    x = _t(x)
    if name in IMAGES:
        x = x.permute(0, 3, 1, 2).contiguous()
    return net, x
