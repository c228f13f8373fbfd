"""The traced NTK Gram of the benchmark CNN over a dataset: ``ntkc.gram`` against naive tiling.

``python -m bench.gram_cnn [--n 2000] [--batch-size B] [--memory-limit BYTES] [--json PATH]``

The CNN is ``bench.models.cnn`` (3 x conv3x3 64 channels, 76k parameters, 10 outputs, float32) on
N synthetic CIFAR-shaped images (32x32x3), ``trace_axes=(-1,)``. Reported:

- the total time of ``ntkc.gram`` (tiles on and above the diagonal, each block's side computed
  once and cached, or recomputed on cache misses), compilation included and separately;
- peak memory the way ``bench/suite.py`` measures it: XLA's accounting (arguments + outputs +
  temporaries) of each compiled program (the side and pair programs, and the naive tile), against
  ``--memory-limit``; also the bytes of sides the cache held and the process's peak RSS;
- the time saved by factor reuse and by symmetry against naive tiling (each tile calls the
  one-shot kernel function on its two blocks, over the full square): the naive tile is timed on
  a few tiles and extrapolated to all of them, which the output says.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import time

import jax
import numpy as np

import ntkc
from bench.models import cnn
from ntkc import _gram


def machine_name() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{os.cpu_count()}core-jax{jax.__version__}"
    return f"{device.device_kind.replace(' ', '_')}-jax{jax.__version__}"


def _program_bytes(fn, *args, **kwargs) -> int | None:
    """XLA's peak of one compiled program (bench/suite.py's measure)."""
    m = fn.lower(*args, **kwargs).compile().memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


class _Probe:
    """Records the gram's programs, their first arguments, the side computations and the cache."""

    def __init__(self, hoist=True):
        self.hoist = hoist
        self.factored = None
        self.args = {}
        self.sides = 0
        self.side_s, self.pair_s = [], []  # seconds of each side and pair call (waited for)
        self.side_bytes = 0
        self.cache_peak = 0
        self._originals = {}

    def __enter__(self):
        probe = self
        cls = _gram._Factored
        self._originals = {"init": cls.__init__, "side": cls.side, "pair": cls.pair,
                           "get": _gram._SideCache.get}

        def init(self, *a, **k):
            probe._originals["init"](self, *a, **k)
            self.hoist = self.hoist and probe.hoist  # --no-hoist: the side-local steps per tile
            probe.factored = self

        def side(self, block):
            probe.sides += 1
            probe.args.setdefault("side", block)
            start = time.perf_counter()
            out = jax.block_until_ready(probe._originals["side"](self, block))
            probe.side_s.append(time.perf_counter() - start)
            probe.side_bytes = _gram._nbytes(out)
            return out

        def pair(self, side1, n1, side2, n2, like):
            probe.args.setdefault("pair", (side1, side2, (n1, n2, like is self.like1)))
            start = time.perf_counter()
            out = probe._originals["pair"](self, side1, n1, side2, n2, like)
            probe.pair_s.append(time.perf_counter() - start)
            return out

        def get(self, key, compute):
            out = probe._originals["get"](self, key, compute)
            probe.cache_peak = max(probe.cache_peak, self.used)
            return out

        cls.__init__, cls.side, cls.pair = init, side, pair
        _gram._SideCache.get = get
        return self

    def __exit__(self, *exc):
        cls = _gram._Factored
        cls.__init__ = self._originals["init"]
        cls.side, cls.pair = self._originals["side"], self._originals["pair"]
        _gram._SideCache.get = self._originals["get"]

    def program_bytes(self) -> dict:
        fac = self.factored
        out = {}
        if fac.factored and "side" in self.args:
            (fn,) = fac._sides.values()
            out["side"] = _program_bytes(fn, fac.params, self.args["side"])
        if "pair" in self.args:
            s1, s2, key = self.args["pair"]
            out["pair"] = _program_bytes(fac._pairs[key], fac.params, s1, s2)
        return out


def side_computations(n, block, cache_bytes, side_bytes) -> tuple[int, int]:
    """(side computations, tiles) of a symmetric gram over ``n`` examples: gram's own tile order
    and cache, run on stand-in sides of ``side_bytes`` each."""
    cache = _gram._SideCache(_gram.DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
    starts = range(0, n, block)
    tiles = _gram._tile_order([(i, j) for i in starts for j in starts if j >= i])
    computed, row = [0], None

    def side(start):
        return cache.get(start, lambda: computed.__setitem__(0, computed[0] + 1)
                         or np.empty(side_bytes, np.uint8))

    for i, j in tiles:
        if row != i:
            row = i
            side(i)
        if j != i:
            side(j)
    return computed[0], len(tiles)


def time_naive_tiles(f, params, x, batch_size, trace_axes, method, tiles):
    """Seconds per tile of the one-shot kernel function on two distinct blocks (after compiling)."""
    kernel_fn = ntkc.ntk_fn(f, trace_axes, vmap_axes=0, method=method)
    a, b = x[:batch_size], x[batch_size:2 * batch_size]
    start = time.perf_counter()
    kernel_fn(a, b, params).block_until_ready()
    compile_s = time.perf_counter() - start
    config, _ = kernel_fn.prepare(a, b, params)
    peak = _program_bytes(jax.jit(lambda a, b, p: kernel_fn(a, b, p), compiler_options=config.jit_options),
                          a, b, params)
    times = []
    for t in range(tiles):
        i, j = (t * batch_size) % len(x), ((t + 1) * batch_size) % len(x)
        a, b = x[i:i + batch_size], x[j:j + batch_size]
        start = time.perf_counter()
        kernel_fn(a, b, params).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times), compile_s, peak, config.method


def run(n, batch_size, memory_limit, cache_bytes, naive_tiles, method="auto", hoist=True,
        log=print):
    f, params, x = cnn(n=n)
    x = np.asarray(x)
    trace_axes = (-1,)
    log(f"ntkc {ntkc.__version__}, JAX {jax.__version__}, {jax.devices()[0].device_kind} "
        f"({platform.machine()}, {os.cpu_count()} cores), {len(jax.devices())} device(s)")
    log(f"CNN 3 x conv3x3 64ch ({sum(l.size for l in jax.tree.leaves(params))} params), "
        f"N={n} images 32x32x3, trace_axes={trace_axes}, method={method!r}, "
        f"batch_size={batch_size}, memory_limit={memory_limit}, cache_bytes={cache_bytes}, "
        f"hoisting {'on' if hoist else 'off'}")

    with _Probe(hoist) as probe:
        start = time.perf_counter()
        theta = ntkc.gram(f, params, x, batch_size=batch_size, memory_limit=memory_limit,
                          cache_bytes=cache_bytes, progress=False, trace_axes=trace_axes,
                          method=method)
        gram_s = time.perf_counter() - start
    fac = probe.factored
    block = _gram_block(fac, n, batch_size)
    blocks = math.ceil(n / block)
    upper, square = blocks * (blocks + 1) // 2, blocks * blocks
    resolved = fac.kernel_fn.method
    programs = probe.program_bytes()
    log(f"gram: {gram_s:.1f} s for {upper} tiles of {block} x {block} ({blocks} blocks), "
        f"method {resolved}, {probe.sides} side computations for {blocks} blocks, "
        f"cache held at most {probe.cache_peak / 2**20:.0f} MiB")

    tile_s, naive_compile_s, naive_peak, naive_method = time_naive_tiles(
        f, params, x, block, trace_axes, resolved, naive_tiles)
    naive_square = tile_s * square
    naive_upper = tile_s * upper
    log(f"naive tile (one-shot kernel on two blocks, method {naive_method}): {tile_s:.2f} s, "
        f"median of {naive_tiles} tiles, EXTRAPOLATED to {square} tiles (full square): "
        f"{naive_square:.0f} s; to the {upper} tiles of the upper triangle: {naive_upper:.0f} s")
    t_side, t_pair = _after_compiling(probe.side_s), _after_compiling(probe.pair_s)
    sim_sides, _ = side_computations(n, block, cache_bytes, probe.side_bytes)
    log(f"side {t_side:.2f} s each ({probe.side_bytes / 2**20:.0f} MiB), pair {t_pair:.2f} s each "
        f"(medians after the first, compiling, call); the cache model predicts {sim_sides} side "
        f"computations here")
    at = {}
    for big in (2000,):
        sides_big, tiles_big = side_computations(big, block, cache_bytes, probe.side_bytes)
        at[big] = {"side_computations": sides_big, "tiles": tiles_big,
                   "gram_s": sides_big * t_side + tiles_big * t_pair,
                   "naive_square_s": tile_s * math.ceil(big / block) ** 2}
        log(f"EXTRAPOLATED to N={big}: {sides_big} side computations x {t_side:.2f} s + "
            f"{tiles_big} tiles x {t_pair:.2f} s = {at[big]['gram_s'] / 60:.0f} min "
            f"(naive square {at[big]['naive_square_s'] / 60:.0f} min)")
    log(f"saved by symmetry: {naive_square - naive_upper:.0f} s; by factor reuse (beyond "
        f"symmetry): {naive_upper - gram_s:.0f} s; gram / naive square = "
        f"{gram_s / naive_square:.2f}")
    limit = f" (memory_limit {memory_limit / 2**20:.0f} MiB)" if memory_limit else ""
    peaks = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in programs.items() if v is not None)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log(f"peak memory, XLA's accounting per program: {peaks}, naive tile "
        f"{(naive_peak or 0) / 2**20:.0f} MiB{limit}; sides cached {probe.cache_peak / 2**20:.0f} "
        f"MiB; kernel {theta.nbytes / 2**20:.1f} MiB; process peak RSS {rss / 2**30:.2f} GiB")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__, "ntkc": ntkc.__version__, "machine": machine_name(),
        "device": jax.devices()[0].device_kind, "devices": len(jax.devices()),
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "n": n, "batch_size": batch_size, "block": block, "blocks": blocks,
        "memory_limit": memory_limit, "cache_bytes": cache_bytes, "method": resolved,
        "hoisted": fac.hoist,
        "gram_s": gram_s, "tiles": upper, "side_computations": probe.sides,
        "cache_peak_bytes": probe.cache_peak, "program_peak_bytes": programs,
        "naive_tile_s": tile_s, "naive_tiles_timed": naive_tiles,
        "naive_compile_s": naive_compile_s, "naive_tile_peak_bytes": naive_peak,
        "naive_square_s_extrapolated": naive_square, "naive_upper_s_extrapolated": naive_upper,
        "saved_by_symmetry_s": naive_square - naive_upper,
        "saved_by_factor_reuse_s": naive_upper - gram_s,
        "peak_rss_bytes": rss,
        "side_s_each": t_side, "pair_s_each": t_pair, "side_bytes": probe.side_bytes,
        "extrapolated": at,
    }


def _after_compiling(times) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def _gram_block(fac, n, batch_size) -> int:
    d = fac.mesh.size
    return d * min(batch_size, math.ceil(n / d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gram_cnn",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--batch-size", type=int, default=64, help="examples per block a side")
    ap.add_argument("--memory-limit", type=int, default=4 * 2**30,
                    help="bytes of one tile's estimated working set (default 4 GiB: a 64 x 64 structured tile is estimated at 2.9 GiB)")
    ap.add_argument("--cache-bytes", type=int, default=None, help="side cache (default 2 GiB)")
    ap.add_argument("--naive-tiles", type=int, default=3, help="naive tiles timed")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--no-hoist", action="store_true",
                    help="compute side-local contraction steps per tile (for comparison)")
    ap.add_argument("--json", default=None,
                    help="where to write the results "
                         "(default bench/results/gram_cnn-<machine>.json)")
    args = ap.parse_args(argv)
    report = run(args.n, args.batch_size, args.memory_limit, args.cache_bytes, args.naive_tiles,
                 args.method, not args.no_hoist)
    path = pathlib.Path(args.json) if args.json else (
        pathlib.Path(__file__).parent / "results" / f"gram_cnn-{report['machine']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
