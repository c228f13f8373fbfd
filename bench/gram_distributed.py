"""``ntkc.gram`` over several processes (``jax.distributed``) against one, on the benchmark CNN.

``python -m bench.gram_distributed [--n 4096] [--channels 64] [--batch-size 64] [--json PATH]``

The kernel is the traced NTK Gram (``trace_axes=(-1,)``, ``method="structured"``) of
``bench.models.cnn`` (3 x conv3x3, 10 outputs, float32) over N synthetic CIFAR-shaped images.
Every configuration runs in fresh processes (one CPU device each, pinned to its own cores with
``os.sched_setaffinity``), joined by ``jax.distributed`` on 127.0.0.1 when there are two:

- ``1p x 1 core``: one process, one core; in memory and into a tile store;
- ``2p x 1 core``: two processes, one core each; into a store and in memory (gathered);
- ``1p x 2 cores``: one process with both cores (XLA's intra-op threads), into a store.

Reported per configuration: wall time of the ``ntkc.gram`` call (the slowest process; compilation
included), and inside it the time spent writing tiles to the store (``np.save`` + fsync + rename),
in the collectives (process 0's done-set broadcast, the closing barrier, the in-memory
``process_allgather``), and the largest deviation from the one-process in-memory kernel.
On a 2-core machine, 2 processes x 1 core against 1 process x 1 core measures how the tiles split
(ideal: 2x); it is not a test of more hardware, since 1 process x 2 cores uses the same two cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def worker(args) -> None:
    """One process of one configuration; prints one JSON line."""
    os.sched_setaffinity(0, set(args.cores))
    import jax

    if args.processes > 1:
        jax.distributed.initialize(args.coordinator, args.processes, args.process_id)
    import numpy as np

    from bench.models import cnn
    from ntkc import _gram, gram
    from ntkc.gram_store import GramStore

    timers = {"write": 0.0, "collectives": 0.0, "tiles": 0, "writes": 0, "side": 0.0, "sides": 0,
              "pair": 0.0}

    def timed(fn, key, count=None):
        def wrapped(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[key] += time.perf_counter() - start
                if count:
                    timers[count] += 1
        return wrapped

    GramStore.write = timed(GramStore.write, "write", "writes")
    _gram._agree_done = timed(_gram._agree_done, "collectives")
    _gram._gather = timed(_gram._gather, "collectives")
    _gram.multihost_utils.sync_global_devices = timed(
        _gram.multihost_utils.sync_global_devices, "collectives")
    side = _gram._Factored.side
    _gram._Factored.side = timed(lambda *a: jax.block_until_ready(side(*a)), "side", "sides")
    _gram._Factored.pair = timed(_gram._Factored.pair, "pair", "tiles")

    f, params, x = cnn(n=args.n, channels=args.channels)
    x = np.asarray(x)
    start = time.perf_counter()
    kernel = gram(f, params, x, batch_size=args.batch_size, out=args.out, progress=False,
                  method="structured")
    seconds = time.perf_counter() - start
    if args.save and jax.process_index() == jax.process_count() - 1:  # gathered, if 2
        np.save(args.save, np.asarray(kernel))
    alone = {}
    if args.processes > 1:  # the collectives on their own, all processes already there
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("warm")
        blocks = -(-args.n // args.batch_size)
        tiles = -(-(blocks * (blocks + 1) // 2) // args.processes)  # one share, as gram gathers
        stack = np.zeros((tiles, args.batch_size, args.batch_size), np.float32)
        multihost_utils.process_allgather(stack)  # compile
        start = time.perf_counter()
        for _ in range(3):
            multihost_utils.sync_global_devices("barrier")
        alone["barrier_s"] = (time.perf_counter() - start) / 3
        start = time.perf_counter()
        for _ in range(3):
            multihost_utils.process_allgather(stack)
        alone["allgather_s"] = (time.perf_counter() - start) / 3
    print(json.dumps({"process": jax.process_index(), "seconds": seconds, **timers, **alone}),
          flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config, n, channels, batch_size, folder, save=None) -> dict:
    """One configuration in fresh processes: their JSON lines, and the slowest one's seconds."""
    processes, cores, store = config["processes"], config["cores"], config["store"]
    out = str(folder / config["name"]) if store else None
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    procs = []
    try:
        for i in range(processes):
            argv = [sys.executable, "-m", "bench.gram_distributed", "--worker", "--n", str(n),
                    "--channels", str(channels), "--batch-size", str(batch_size),
                    "--processes", str(processes), "--process-id", str(i),
                    "--coordinator", f"127.0.0.1:{port}",
                    "--cores", ",".join(map(str, cores[i]))]
            argv += ["--out", out] if out else []
            argv += ["--save", save] if save else []
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(f"{config['name']}: a worker failed:\n{stderr[-3000:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {**config, "workers": results, "seconds": max(r["seconds"] for r in results),
            "out": out}


CONFIGS = [
    {"name": "1p-1core-memory", "processes": 1, "cores": [[0]], "store": False},
    {"name": "1p-1core-store", "processes": 1, "cores": [[0]], "store": True},
    {"name": "2p-1core-store", "processes": 2, "cores": [[0], [1]], "store": True},
    {"name": "2p-1core-memory", "processes": 2, "cores": [[0], [1]], "store": False},
    {"name": "1p-2core-store", "processes": 1, "cores": [[0, 1]], "store": True},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gram_distributed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="examples (default 4096)")
    ap.add_argument("--channels", type=int, default=64, help="CNN channels (default 64)")
    ap.add_argument("--batch-size", type=int, default=64, help="examples per block (default 64)")
    ap.add_argument("--json", default=None, help="report path (default "
                    "bench/results/gram_distributed-n<N>-<machine>.json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cores", default="0", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.cores = [int(c) for c in args.cores.split(",")]
        worker(args)
        return 0

    import jax
    import numpy as np

    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores")
    machine = f"cpu-{os.cpu_count()}core-jax{jax.__version__}"
    folder = pathlib.Path(tempfile.mkdtemp(prefix="ntkc-gram-distributed-"))
    print(f"ntkc.gram of the bench CNN ({args.channels} channels), N={args.n}, blocks of "
          f"{args.batch_size}, structured, traced, float32; {machine}, {platform.machine()}",
          flush=True)
    rows = []
    try:
        reference = folder / "reference.npy"
        for config in CONFIGS:
            saved = folder / f"{config['name']}.npy"
            row = run(config, args.n, args.channels, args.batch_size, folder,
                      save=None if config["store"] else str(saved))
            if config is CONFIGS[0]:
                saved.rename(reference)
            want = np.load(reference, mmap_mode="r")
            if row["out"]:
                from ntkc import open_gram
                got = np.asarray(open_gram(row["out"]))
            else:
                got = np.load(reference if config is CONFIGS[0] else saved)
            row["max_deviation"] = float(np.max(np.abs(got - want)))
            w = row["workers"]
            row["tiles"] = [r["tiles"] for r in w]
            row["write_s"] = max(r["write"] for r in w)
            row["writes"] = sum(r["writes"] for r in w)
            row["collectives_s"] = max(r["collectives"] for r in w)
            for key in ("barrier_s", "allgather_s"):
                if key in w[0]:
                    row[key] = max(r[key] for r in w)
            rows.append(row)
            print(f"{config['name']:<16} {row['seconds']:7.1f} s  per process: "
                  + ", ".join(f"{r['seconds']:.1f} s = {r['sides']} sides {r['side']:.1f} s + "
                              f"{r['tiles']} tiles {r['pair']:.1f} s" for r in w)
                  + f"; store writes {row['write_s']:.2f} s ({row['writes']} tiles); in "
                  f"collectives {row['collectives_s']:.2f} s"
                  + (f" (alone: barrier {row['barrier_s'] * 1e3:.1f} ms, allgather of one "
                     f"share {row['allgather_s'] * 1e3:.1f} ms)" if "barrier_s" in row else "")
                  + f"; max |dev| {row['max_deviation']:.2g}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = rows[0]["seconds"]
    for row in rows:
        print(f"{row['name']:<18} {base / row['seconds']:.2f}x of 1p-1core-memory")
    report = {"machine": machine, "date": datetime.datetime.now(datetime.UTC).isoformat(),
              "n": args.n, "channels": args.channels, "batch_size": args.batch_size,
              "rows": [{k: v for k, v in r.items() if k != "out"} for r in rows]}
    path = pathlib.Path(args.json) if args.json else (
        ROOT / "bench" / "results" / f"gram_distributed-n{args.n}-{machine}.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
