"""A Gram matrix on disk as a directory of tiles, written by any number of processes at once and
read back as one lazily assembled array.

    DIR/manifest.json            shape, dtype, tile grid, and the fingerprints of the function
                                 (its traced program), params, data and options it is the kernel of
    DIR/tile-<bi>-<bj>.npy       block row ``bi`` against block column ``bj`` (cropped at the edges)

A tile is done iff its file exists. Each is written under a temporary name and renamed into place
(``os.replace``, atomic on POSIX file systems), so a crash never leaves a half-written tile, and no
shared file is ever rewritten: processes record progress without locks or messages. For a
symmetric kernel only the tiles with ``bj >= bi`` are stored; the rest are read mirrored.

``ntkc.gram(..., out="DIR")`` writes a store (see ``ntkc/_gram.py``); :func:`open_gram` reads one,
from any process or a later plain Python session.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import socket

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "ntkc-gram-store"
VERSION = 1
_TILE = re.compile(r"tile-(\d+)-(\d+)\.npy")


def tile_name(bi: int, bj: int) -> str:
    return f"tile-{bi:05d}-{bj:05d}.npy"


def is_store(path) -> bool:
    """Whether ``out`` names a tile store (a directory) rather than one ``.npy`` file."""
    path = os.fspath(path)
    return os.path.isdir(path) or not path.endswith(".npy")


def _write_atomic(path: str, write) -> None:
    """``write(fh)`` to a temporary file beside ``path``, then renamed onto it: readers see the
    old file or the whole new one, never a part (names carry host and pid: no two writers share
    a temporary file)."""
    tmp = os.path.join(os.path.dirname(path),
                       f".tmp-{socket.gethostname()}-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the data before the name: a done tile survives a host crash
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_manifest(path) -> dict:
    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is not a Gram store: it has no {MANIFEST} "
                                "(ntkc.gram(..., out=DIR) or `ntkc gram` writes one)")
    with open(file) as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not an ntkc Gram store manifest")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer ntkc (store version "
                         f"{manifest['version']}, this one reads {VERSION})")
    return manifest


class GramStore:
    """The writing side: one per process, each writing its own tiles."""

    def __init__(self, path, manifest: dict):
        self.path, self.manifest = os.fspath(path), manifest

    @classmethod
    def open(cls, path, manifest: dict, check) -> "GramStore":
        """The store at ``path``: created with ``manifest`` if new, else its manifest is passed to
        ``check(old_manifest)``, which raises if the store is for another kernel.

        Every process may call this at once: each writes the same manifest atomically, then all
        check what is there (a process with other data or params is refused, not overwritten)."""
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is a file, not a Gram store directory; a path ending in "
                             ".npy writes one .npy file instead")
        os.makedirs(path, exist_ok=True)
        file = os.path.join(path, MANIFEST)
        if not os.path.exists(file):
            foreign = [n for n in os.listdir(path)  # (another process's manifest may be new)
                       if not n.startswith(".tmp-") and n != MANIFEST]
            if foreign:
                raise ValueError(f"{path} is a directory that is not a Gram store (it holds "
                                 f"{foreign[0]!r} and no {MANIFEST}); pick an empty or new one")
            text = json.dumps(manifest).encode()
            _write_atomic(file, lambda fh: fh.write(text))
        check(read_manifest(path))
        return cls(path, manifest)

    def done(self) -> set[tuple[int, int]]:
        """The tiles whose files exist, as (block row, block column)."""
        return {(int(m[1]), int(m[2])) for m in map(_TILE.fullmatch, os.listdir(self.path)) if m}

    def write(self, bi: int, bj: int, tile: np.ndarray) -> None:
        _write_atomic(os.path.join(self.path, tile_name(bi, bj)),
                      lambda fh: np.save(fh, np.ascontiguousarray(tile)))


class GramArray:
    """A Gram store read as one array, assembled lazily from memory-mapped tiles.

    ``kernel[rows, cols, ...]`` (ints, slices and ``...``) reads only the tiles it overlaps;
    ``np.asarray(kernel)`` reads all of them (the whole N1 x N2 kernel in memory). Tiles below
    the diagonal of a symmetric kernel are its mirrored upper tiles. Reading a tile that is not
    done yet raises; :attr:`missing` lists those.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        m = read_manifest(self.path)
        self.manifest = m
        self.shape = tuple(m["shape"])
        self.dtype = np.dtype(m["dtype"])
        self.symmetric = bool(m["symmetric"])
        self.block = tuple(m["block"])
        self._mirror = tuple(m["mirror"])

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))

    def __len__(self):
        return self.shape[0]

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """Every stored tile (block row, block column) of a complete store."""
        rows, cols = (-(-n // b) for n, b in zip(self.shape, self.block))
        return [(i, j) for i in range(rows) for j in range(cols) if not self.symmetric or j >= i]

    @property
    def missing(self) -> list[tuple[int, int]]:
        done = GramStore(self.path, self.manifest).done()
        return [t for t in self.tiles if t not in done]

    @property
    def complete(self) -> bool:
        return not self.missing

    def __repr__(self):
        missing = len(self.missing)
        state = "complete" if not missing else f"{missing} of {len(self.tiles)} tiles missing"
        return (f"GramArray({self.path!r}, shape={self.shape}, dtype={self.dtype}, "
                f"{'symmetric, ' if self.symmetric else ''}tiles {self.block}, {state})")

    def _tile(self, bi, bj) -> np.ndarray:
        mirrored = self.symmetric and bj < bi
        name = tile_name(*((bj, bi) if mirrored else (bi, bj)))
        try:
            tile = np.load(os.path.join(self.path, name), mmap_mode="r")
        except FileNotFoundError:
            raise ValueError(f"{self.path}: tile {name} is not computed yet ({len(self.missing)} "
                             f"of {len(self.tiles)} missing); rerun the same ntkc.gram or "
                             "`ntkc gram` to finish the store") from None
        return np.transpose(tile, self._mirror) if mirrored else tile

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a kernel of {self.ndim} axes")
        key = key + (slice(None),) * (self.ndim - len(key))
        for k in key:
            if isinstance(k, bool) or not isinstance(k, (numbers.Integral, slice)):
                raise TypeError(f"a GramArray takes ints, slices and '...', got {k!r}; "
                                "index np.asarray(kernel) (all of it in memory) for the rest")
        rows, cols = (np.arange(n)[k] for n, k in zip(self.shape, key[:2]))
        rest = (slice(None), slice(None)) + key[2:]
        trailing = np.broadcast_to(np.empty((), self.dtype), self.shape[2:])[key[2:]].shape
        r, c = np.atleast_1d(rows), np.atleast_1d(cols)
        out = np.empty((len(r), len(c)) + trailing, self.dtype)
        b1, b2 = self.block
        for bi in np.unique(r // b1):
            ri = np.flatnonzero(r // b1 == bi)
            for bj in np.unique(c // b2):
                ci = np.flatnonzero(c // b2 == bj)
                tile = self._tile(int(bi), int(bj))
                out[np.ix_(ri, ci)] = tile[np.ix_(r[ri] - bi * b1, c[ci] - bj * b2)][rest]
        return out[(0 if np.ndim(rows) == 0 else slice(None),
                    0 if np.ndim(cols) == 0 else slice(None))]

    def __array__(self, dtype=None, copy=None):
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def open_gram(path) -> GramArray:
    """Opens the Gram store that ``ntkc.gram(..., out=path)`` or ``ntkc gram --out path`` wrote.

    Returns:
      A :class:`GramArray`: ``.shape``, ``.dtype``, slicing (ints, slices, ``...``) that reads only
      the memory-mapped tiles it needs, ``np.asarray`` for the whole kernel, ``.missing`` for the
      tiles not computed yet. Symmetric kernels store their upper tiles and read mirrored.
    """
    return GramArray(path)
