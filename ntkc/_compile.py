"""Ahead-of-time compilation: ``ntkc.compile`` and ``ntkc.load``.

``compile`` resolves a kernel function's configuration for fixed input shapes (arrays or
``jax.ShapeDtypeStruct``), lowers and compiles it with XLA, and returns a :class:`Compiled`
program. ``Compiled.save`` serializes the program with ``jax.export`` into a file that
:func:`load` runs in another process, without ``f``'s source.

The exported program takes and returns flat lists of arrays; the pytree structures of the inputs
and outputs travel in the file's JSON header (see :func:`_encode_tree`), never pickled.

File layout (format 1), little endian::

    MAGIC (8 bytes) | format version (uint32) | header length (uint64) | header (JSON, UTF-8)
    | payload (jax.export serialization; its length and SHA-256 are in the header)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
from typing import Any, Callable, Mapping

import jax
import numpy as np

from ntkc import _compat
from ntkc._api import KernelFunction
from ntkc._args import check_mapping
from ntkc.methods import structured
from ntkc.passes.cost import Cost
from ntkc._api import plan as _plan_fn

MAGIC = b"\x89NTKC\r\n\x1a"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length

__all__ = ["Compiled", "CompiledCost", "Loaded", "compile", "load"]


# ----------------------------------------------------------------------------- pytree structures


class _Unsupported(Exception):
    pass


def _encode(tree):
    if tree is None:
        return None
    if type(tree) is tuple:
        return {"tuple": [_encode(c) for c in tree]}
    if type(tree) is list:
        return {"list": [_encode(c) for c in tree]}
    if type(tree) is dict:
        if not all(type(k) in (str, int) for k in tree):
            raise _Unsupported
        try:
            keys = sorted(tree)  # jax's order for dict keys
        except TypeError:
            raise _Unsupported from None
        return {"dict": [[k, _encode(tree[k])] for k in keys]}
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)):
        return "*"
    raise _Unsupported  # a custom pytree node (namedtuple, OrderedDict, a module, ...)


def _decode(code, leaves):
    if code is None:
        return None
    if code == "*":
        return next(leaves)
    if "tuple" in code:
        return tuple(_decode(c, leaves) for c in code["tuple"])
    if "list" in code:
        return [_decode(c, leaves) for c in code["list"]]
    return {k: _decode(c, leaves) for k, c in code["dict"]}


def _encode_tree(tree):
    """A JSON encoding of ``tree``'s structure when it nests only dict (str or int keys), list,
    tuple and None around leaves; ``None`` otherwise (custom pytree nodes are not encoded)."""
    try:
        code = _encode(tree)
    except _Unsupported:
        return None
    leaves, treedef = jax.tree.flatten(tree)
    if jax.tree.structure(_decode(code, iter(leaves))) != treedef:  # paranoia: same flattening
        return None
    return code


def _decode_tree(code, leaves):
    return _decode(code, iter(leaves))


# ----------------------------------------------------------------------------- signatures


def _dtype(leaf) -> np.dtype:
    """The dtype jit gives ``leaf`` (float64 numpy arrays are float32 without x64)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:  # a Python scalar
        dtype = np.result_type(leaf)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _abstract(tree):
    return jax.tree.map(lambda l: jax.ShapeDtypeStruct(tuple(np.shape(l)), _dtype(l)), tree)


@dataclasses.dataclass(frozen=True)
class _ArgSpec:
    """The expected pytree of one argument (``x1``, ``x2`` or ``params``)."""

    name: str
    treedef: Any  # a PyTreeDef in process; None for a loaded program
    tree: Any  # the JSON encoding of the structure, or None
    structure: str  # str(treedef), for messages
    leaves: tuple  # (name, shape, dtype string) per leaf

    @classmethod
    def of(cls, name, tree):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = tuple((name + jax.tree_util.keystr(path), tuple(np.shape(l)), str(_dtype(l)))
                       for path, l in flat)
        return cls(name, treedef, _encode_tree(tree), str(treedef), leaves)

    def to_json(self):
        return {"tree": self.tree, "structure": self.structure,
                "leaves": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.leaves]}

    @classmethod
    def from_json(cls, name, data):
        leaves = tuple((l["name"], tuple(l["shape"]), l["dtype"]) for l in data["leaves"])
        return cls(name, None, data["tree"], data["structure"], leaves)

    def check(self, value) -> list:
        """The leaves of ``value``, after checking them against this spec."""
        leaves, treedef = jax.tree.flatten(value)
        if self.treedef is not None:
            same = treedef == self.treedef
        elif self.tree is not None:
            same = _encode_tree(value) == self.tree
        else:
            same = len(leaves) == len(self.leaves)
        if not same:
            raise ValueError(
                f"{self.name}: the program was compiled for a pytree of structure "
                f"{self.structure} ({len(self.leaves)} leaves), got {treedef} "
                f"({len(leaves)} leaves)")
        for leaf, (name, shape, dtype) in zip(leaves, self.leaves):
            got_shape, got_dtype = tuple(np.shape(leaf)), str(_dtype(leaf))
            if got_shape != shape or got_dtype != dtype:
                raise ValueError(
                    f"{name}: the program was compiled for shape {shape} and dtype {dtype}, "
                    f"got shape {got_shape} and dtype {got_dtype}; compile again for new shapes")
        return leaves


class _Signature:
    """The inputs a program was compiled for: checks a call and flattens its arguments."""

    def __init__(self, x1: _ArgSpec, x2: _ArgSpec | None, params: _ArgSpec):
        self.x1, self.x2, self.params = x1, x2, params

    def flatten(self, x1, x2, params) -> list:
        if x1 is None:
            raise ValueError("x1 is None; pass the inputs the program was compiled for")
        if self.x2 is None and x2 is not None:
            raise ValueError("x2: the program was compiled with x2=None (x2 = x1); call it with "
                             "x2=None, or compile again with an x2")
        if self.x2 is not None and x2 is None:
            raise ValueError(f"x2 is None, but the program was compiled for an x2 of structure "
                             f"{self.x2.structure}; pass x2 (or compile with x2=None)")
        flat = self.x1.check(x1)
        if self.x2 is not None:
            flat += self.x2.check(x2)
        return flat + self.params.check(params)

    @property
    def specs(self):
        return [s for s in (self.x1, self.x2, self.params) if s is not None]

    def abstract_leaves(self):
        return [jax.ShapeDtypeStruct(shape, np.dtype(dtype))
                for spec in self.specs for _, shape, dtype in spec.leaves]

    def to_json(self):
        return {"x1": self.x1.to_json(), "x2": None if self.x2 is None else self.x2.to_json(),
                "params": self.params.to_json()}

    @classmethod
    def from_json(cls, data):
        x2 = None if data["x2"] is None else _ArgSpec.from_json("x2", data["x2"])
        return cls(_ArgSpec.from_json("x1", data["x1"]), x2,
                   _ArgSpec.from_json("params", data["params"]))


_X64_DTYPES = frozenset(map(np.dtype, (np.int64, np.uint64, np.float64, np.complex128)))


def _uses_x64(dtypes) -> bool:
    """Whether a program on these dtypes needs ``jax_enable_x64`` to be called."""
    return any(np.dtype(d) in _X64_DTYPES for d in dtypes)


# ----------------------------------------------------------------------------- costs


def _normalize_cost_analysis(analysis) -> dict[str, float]:
    """XLA's ``cost_analysis()`` as one flat dict: a dict (newer JAX) or a list of dicts, one per
    module (older JAX), summed; ``None`` or an unsupported backend gives ``{}``."""
    if analysis is None:
        return {}
    parts = [analysis] if isinstance(analysis, Mapping) else list(analysis)
    out: dict[str, float] = {}
    for part in parts:
        for k, v in (part or {}).items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                out[k] = out.get(k, 0.0) + float(v)
    return out


@dataclasses.dataclass(frozen=True)
class CompiledCost:
    """ntkc's estimate next to XLA's cost analysis of the compiled program.

    Attributes:
      estimate: ntkc's :class:`ntkc.Cost` of the program, as the planner sees it: for the
        structured method ``plan.cost`` (cotangent passes plus every contraction term), for the
        others (and a per-leaf mix) the FLOPs that ``method="auto"`` compared.
      method: the method the program runs (``method="auto"`` resolved).
      xla: XLA's ``compiled.cost_analysis()`` normalized to a flat ``{name: float}`` dict
        (``"flops"``, ``"bytes accessed"``, ...); empty where the backend gives none.
    """

    estimate: Any
    method: str
    xla: Mapping[str, float]

    @property
    def estimate_flops(self) -> float:
        return float(self.estimate.flops)

    @property
    def xla_flops(self) -> float | None:
        return self.xla.get("flops")

    def __repr__(self) -> str:
        xla_flops = self.xla_flops
        xla_bytes = self.xla.get("bytes accessed")
        fmt = lambda v: "n/a" if v is None else f"{v:.3g}"
        return (f"CompiledCost(method={self.method!r}: flops ntkc {fmt(self.estimate.flops)} vs "
                f"XLA {fmt(xla_flops)}; bytes ntkc {fmt(self.estimate.bytes)} vs XLA "
                f"{fmt(xla_bytes)}; ntkc peak {fmt(self.estimate.peak)} B)")


# ----------------------------------------------------------------------------- compile


def _check_kwargs(kwargs: dict) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(kwargs)[0]:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(
                f"kwargs{jax.tree_util.keystr(path)} is a jax.ShapeDtypeStruct: ntkc.compile bakes "
                "array keyword arguments into the program as constants, so they must be concrete "
                "arrays; to vary an array between calls, make it part of x (a pytree input)")


def compile(f: Callable, x1, x2, params, *, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
            method: str = "auto", strict: bool = False, memory_limit: int | None = None,
            kwargs: dict | None = None) -> "Compiled":
    """Compiles the empirical NTK of ``f`` ahead of time, for the shapes and dtypes of the inputs.

    Args:
      f: ``f(params, x, **kwargs)``, as for :func:`ntkc.ntk_fn`.
      x1, x2, params: arrays or ``jax.ShapeDtypeStruct`` pytrees (only shapes and dtypes are
        used); ``x2=None`` means ``x2 = x1``, and the program is then called with ``x2=None``.
      trace_axes, diagonal_axes, vmap_axes, method, strict, memory_limit: as for
        :func:`ntkc.ntk_fn`. A kernel split under ``memory_limit`` (into blocks of examples or
        chunks of outputs) is one program holding every part, each part's working set within
        the limit; XLA schedules the parts one after another.
      kwargs: keyword arguments of ``f``, split between the sides as the kernel function does
        (a 2-tuple gives one item per side, an ``rng`` key is split). Non-array values are static;
        array values (an rng key, a mask) are baked into the program as constants, so they must
        be concrete arrays and are fixed for every call: put an array that varies between calls
        in ``x``.

    Returns:
      A :class:`Compiled` program: ``compiled(x1, x2, params)`` returns the kernel (a pytree of
      kernels for a pytree output), equal to ``ntkc.ntk_fn(f, ...)(x1, x2, params, **kwargs)``.

    Example:
      >>> import jax, jax.numpy as jnp, ntkc
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> params = {"w": jnp.ones((3, 8)), "v": jnp.ones((8, 2))}
      >>> x = jax.ShapeDtypeStruct((4, 3), jnp.float32)
      >>> compiled = ntkc.compile(f, x, None, params, vmap_axes=0)
      >>> compiled(jnp.ones((4, 3)), None, params).shape
      (4, 4)
    """
    kwargs = check_mapping(kwargs)
    _check_kwargs(kwargs)
    options = dict(trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=vmap_axes,
                   method=method, strict=strict, memory_limit=memory_limit)
    a1, a2, ap = _abstract(x1), (None if x2 is None else _abstract(x2)), _abstract(params)
    kfn = KernelFunction(f, **options)
    config, _ = kfn.prepare(a1, a2, ap, **kwargs)
    signature = _Signature(_ArgSpec.of("x1", a1),
                           None if x2 is None else _ArgSpec.of("x2", a2),
                           _ArgSpec.of("params", ap))
    treedefs = [jax.tree.structure(a1), None if x2 is None else jax.tree.structure(a2),
                jax.tree.structure(ap)]

    def flat_fn(*leaves):
        trees, pos = [], 0
        for treedef in treedefs:
            if treedef is None:
                trees.append(None)
                continue
            trees.append(jax.tree.unflatten(treedef, leaves[pos : pos + treedef.num_leaves]))
            pos += treedef.num_leaves
        # the kernel function itself, traced: a split into blocks of examples or chunks of
        # outputs runs part by part inside this one program
        return jax.tree.leaves(kfn(*trees, **kwargs))

    jitted = jax.jit(flat_fn, compiler_options=config.jit_options)
    lowered = jitted.lower(*signature.abstract_leaves())
    executable = lowered.compile()
    plan_args = dict(options, kwargs=kwargs)
    return Compiled(f, (a1, a2, ap), plan_args, config, signature, jitted, lowered, executable)


class Compiled:
    """An NTK program compiled for fixed input shapes and dtypes, returned by :func:`compile`.

    Call it as ``compiled(x1, x2, params)`` with inputs of the shapes and dtypes it was compiled
    for (``x2=None`` exactly when it was compiled with ``x2=None``); other shapes or dtypes
    raise ``ValueError``.

    Attributes:
      method: the method the program runs (``method="auto"`` resolved).
      plan: :func:`ntkc.plan` for these shapes (computed on first access).
      cost: a :class:`CompiledCost`: ntkc's estimate next to XLA's cost analysis.
      lowered, executable: JAX's ``Lowered`` and ``Compiled`` stages of the flat program.
    """

    def __init__(self, f, abstract_args, plan_args, config, signature, jitted, lowered,
                 executable):
        self._f, self._abstract_args, self._plan_args = f, abstract_args, plan_args
        self._config, self._signature, self._jitted = config, signature, jitted
        self.lowered, self.executable = lowered, executable

    @functools.cached_property
    def method(self) -> str:
        """The method the program runs (for a split, the one each part runs)."""
        return self.plan.method if self._config.block or self._config.chunk else self._config.method

    def __call__(self, x1, x2, params):
        flat = self._signature.flatten(x1, x2, params)
        return jax.tree.unflatten(self._config.out_treedef, self.executable(*flat))

    @functools.cached_property
    def plan(self):
        """The :class:`ntkc.ir.Plan` for these shapes, as :func:`ntkc.plan` gives it."""
        return _plan_fn(self._f, *self._abstract_args, **self._plan_args)

    @functools.cached_property
    def cost(self) -> CompiledCost:
        try:
            analysis = self.executable.cost_analysis()
        except Exception:  # a backend without cost analysis
            analysis = None
        estimate = self.plan.cost
        if self.method != structured.NAME:  # the plan's cost is structured's; FLOPs only for others
            estimate = Cost(flops=self.plan.method_costs.get(self.method, float("nan")))
        return CompiledCost(estimate, self.method, _normalize_cost_analysis(analysis))

    def as_text(self) -> str:
        """The lowered program as StableHLO text."""
        return self.lowered.as_text()

    def _output_specs(self):
        outs = jax.eval_shape(self._jitted, *self._signature.abstract_leaves())
        out_tree = jax.tree.unflatten(self._config.out_treedef, outs)
        return _ArgSpec.of("kernel", out_tree)

    def save(self, path, *, platforms=None):
        """Serializes the program with ``jax.export`` to ``path`` (never pickled).

        Args:
          path: the file to write (replaced atomically).
          platforms: passed to ``jax.export.export`` (e.g. ``("cpu", "cuda")``); default: the
            current backend only, so the file runs on that platform.

        Returns:
          ``path``.
        """
        import ntkc

        exported = jax.export.export(self._jitted, platforms=platforms)(
            *self._signature.abstract_leaves())
        payload = bytes(exported.serialize())
        opts = self._plan_args
        dtypes = [d for s in self._signature.specs for _, _, d in s.leaves]
        header = {
            "format": FORMAT_VERSION,
            "ntkc_version": ntkc.__version__,
            "jax_version": jax.__version__,
            "platforms": list(exported.platforms),
            "x64": _uses_x64(dtypes),
            "method": self.method,
            "compiler_options": dict(self._config.compiler_options),
            "options": {
                "trace_axes": repr(opts["trace_axes"]),
                "diagonal_axes": repr(opts["diagonal_axes"]),
                "vmap_axes": repr(opts["vmap_axes"]),
                "method": opts["method"],
                "strict": bool(opts["strict"]),
                "memory_limit": opts["memory_limit"],
                "kwargs": {k: repr(v) for k, v in sorted(opts["kwargs"].items())},
            },
            "function": getattr(self._f, "__qualname__", repr(self._f)),
            "inputs": self._signature.to_json(),
            "outputs": self._output_specs().to_json(),
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = json.dumps(header, sort_keys=True).encode("utf-8")
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)))
            fh.write(head)
            fh.write(payload)
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        x1 = [s for _, s, _ in self._signature.x1.leaves]
        return (f"Compiled(ntk of {getattr(self._f, '__name__', self._f)!s}, "
                f"method={self.method!r}, x1 {x1[0] if len(x1) == 1 else x1}, "
                f"x2={'None' if self._signature.x2 is None else 'given'})")


# ----------------------------------------------------------------------------- load


def _read(path) -> tuple[dict, bytes]:
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    where = f"{path!s}"
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{where}: not an ntkc compiled-kernel file (it does not start with "
                         f"the magic bytes {MAGIC!r}; found {data[:len(MAGIC)]!r})")
    if len(data) < _PREFIX.size:
        raise ValueError(f"{where}: truncated ntkc file ({len(data)} bytes, shorter than its "
                         f"{_PREFIX.size}-byte prefix)")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: ntkc file format {version}, but this ntkc reads format "
                         f"{FORMAT_VERSION}; save it again with this version")
    end = _PREFIX.size + head_len
    if end > len(data):
        raise ValueError(f"{where}: truncated ntkc file (header of {head_len} bytes declared, "
                         f"{len(data) - _PREFIX.size} bytes follow the prefix)")
    try:
        header = json.loads(data[_PREFIX.size : end].decode("utf-8"))
        n, digest = int(header["payload_bytes"]), str(header["payload_sha256"])
        header["inputs"], header["outputs"]  # noqa: B018 (required keys)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: bad ntkc file header ({type(err).__name__}: {err})") from None
    payload = data[end:]
    if len(payload) != n:
        raise ValueError(f"{where}: {'truncated' if len(payload) < n else 'trailing bytes in'} "
                         f"ntkc file (payload of {len(payload)} bytes, header says {n})")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{where}: corrupted ntkc file (the payload's SHA-256 does not match "
                         "its header)")
    return header, payload


def load(path) -> "Loaded":
    """Loads a program written by :meth:`Compiled.save`; it runs without ``f``'s source.

    Args:
      path: the file.

    Returns:
      A :class:`Loaded` program, called as ``loaded(x1, x2, params)`` like the :class:`Compiled`
      it was saved from.

    Raises:
      ValueError: naming ``path``, for a file that is not an ntkc file, is truncated, has a
        bad header or a corrupted payload, or was written in another format version.
    """
    header, payload = _read(path)
    try:
        exported = jax.export.deserialize(bytearray(payload))
    except Exception as err:
        raise ValueError(f"{os.fspath(path)}: cannot deserialize the ntkc program "
                         f"({type(err).__name__}: {err})") from None
    try:
        signature = _Signature.from_json(header["inputs"])
        outputs = _ArgSpec.from_json("kernel", header["outputs"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)}: bad ntkc file header ({type(err).__name__}: "
                         f"{err})") from None
    return Loaded(os.fspath(path), header, exported, signature, outputs)


class Loaded:
    """A program read by :func:`load`: ``loaded(x1, x2, params)``.

    Inputs are checked against the shapes, dtypes and (for pytrees of dict, list, tuple and None)
    the structures saved in the file. The output has the saved structure when it nests only
    dicts, lists and tuples; for another output pytree (a namedtuple, a custom node) the call
    returns the flat list of kernel leaves, in ``jax.tree.leaves`` order.

    Attributes:
      path: the file.
      metadata: the file's JSON header (versions, options, shapes and dtypes).
      method: the method the program runs.
      exported: the ``jax.export.Exported``.
    """

    def __init__(self, path, metadata, exported, signature, outputs):
        self.path, self.metadata, self.exported = path, metadata, exported
        self.method = metadata.get("method")
        self._signature, self._outputs = signature, outputs
        options = _compat.known_options(metadata.get("compiler_options", {}))
        self._call = jax.jit(exported.call, compiler_options=_compat.jit_options(options))

    def __call__(self, x1, x2, params):
        if self.metadata.get("x64") and not jax.config.jax_enable_x64:
            raise ValueError(
                f"{self.path}: the program was compiled for 64-bit dtypes, but jax_enable_x64 is "
                "off; set JAX_ENABLE_X64=1 or jax.config.update('jax_enable_x64', True) first")
        flat = self._signature.flatten(x1, x2, params)
        out = self._call(*flat)
        if self._outputs.tree is None:
            return list(out)
        return _decode_tree(self._outputs.tree, out)

    def __repr__(self) -> str:
        return (f"Loaded({self.path!r}, method={self.method!r}, "
                f"function={self.metadata.get('function')!r}, "
                f"ntkc {self.metadata.get('ntkc_version')}, jax {self.metadata.get('jax_version')})")
