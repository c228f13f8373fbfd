"""Training a network, its linearization, and ntkc.predict's closed form, side by side.

``python -m bench.linearized_figure [--width 256] [--steps 3000] [--out docs/figures/linearized.png]``

A 1-D regression (``y = sin(2x) + noise``, 16 training points, 200 test points) fit by full-batch
gradient descent on ``0.5 · mean((f - y)²)`` with a two-hidden-layer tanh MLP in NTK
parameterisation. Three curves per set: the network itself, its linearization
(:func:`ntkc.linearize`) trained by the same gradient descent, and
:func:`ntkc.predict.gradient_descent_mse` evaluated from the NTK at initialisation. The right
panel shows the three functions at the end of training.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import ntkc  # noqa: E402  (after the x64 switch)


def mlp(width, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [1, width, width, 1]
    params = [{"w": rng.standard_normal((a, b)), "b": 0.1 * rng.standard_normal(b)}
              for a, b in zip(sizes[:-1], sizes[1:])]

    def f(params, x):
        for i, p in enumerate(params):
            x = x @ p["w"] / np.sqrt(p["w"].shape[0]) + p["b"][None]
            if i < len(params) - 1:
                x = jnp.tanh(x)
        return x

    return f, params


def data(seed=1):
    rng = np.random.default_rng(seed)
    x_train = np.sort(rng.uniform(-2.5, 2.5, 16))[:, None]
    y_train = np.sin(2 * x_train) + 0.1 * rng.standard_normal(x_train.shape)
    x_test = np.linspace(-3, 3, 200)[:, None]
    return x_train, y_train, x_test, np.sin(2 * x_test)


def train(f, params, x, y, lr, checkpoints):
    """Full-batch gradient descent; the parameters at each checkpoint step."""
    loss = lambda p: 0.5 * jnp.mean((f(p, x) - y) ** 2)

    @jax.jit
    def run(p, n):
        step = lambda _, q: jax.tree.map(lambda a, g: a - lr * g, q, jax.grad(loss)(q))
        return jax.lax.fori_loop(0, n, step, p)

    out, done = [], 0
    for s in checkpoints:
        params, done = run(params, s - done), s
        out.append(params)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.linearized_figure")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="docs/figures/linearized.png")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, params = mlp(args.width)
    x_train, y_train, x_test, y_test = data()
    kernel_fn = ntkc.ntk_fn(f, trace_axes=(), vmap_axes=0)
    k_dd, k_td = kernel_fn(x_train, None, params), kernel_fn(x_test, x_train, params)
    lr = 0.5 * ntkc.predict.max_learning_rate(k_dd)
    steps = np.unique(np.geomspace(1, args.steps, 40).astype(int))
    checkpoints = np.concatenate([[0], steps])

    f_lin = ntkc.linearize(f, params)
    mse = lambda a, b: float(0.5 * np.mean((np.asarray(a) - b) ** 2))
    curves = {}
    for name, g in (("network", f), ("linearized network", f_lin)):
        trained = train(g, params, x_train, y_train, lr, checkpoints)
        curves[name] = ([mse(g(p, x_train), y_train) for p in trained],
                        [mse(g(p, x_test), y_test) for p in trained],
                        np.asarray(g(trained[-1], x_test)))
    predict_fn = ntkc.predict.gradient_descent_mse(k_dd, y_train, learning_rate=lr, trace_axes=())
    fx_train, fx_test = predict_fn(checkpoints.astype(float), f(params, x_train),
                                   f(params, x_test), k_td)
    curves["predict.gradient_descent_mse"] = ([mse(a, y_train) for a in fx_train],
                                              [mse(a, y_test) for a in fx_test],
                                              np.asarray(fx_test[-1]))

    fig, (ax, fit) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"network": ("C0", "-", None), "linearized network": ("C1", "--", None),
              "predict.gradient_descent_mse": ("k", ":", "o")}
    t = np.maximum(checkpoints, 0.5)   # step 0 drawn at 0.5 on the log axis
    for name, (tr, te, _) in curves.items():
        color, ls, marker = styles[name]
        ax.plot(t, tr, color=color, ls=ls, lw=2, label=f"{name}: train")
        ax.plot(t, te, color=color, ls=ls, lw=1, alpha=0.6, marker=marker, markevery=4, ms=3,
                label=f"{name}: test")
    ax.set(xscale="log", yscale="log", xlabel=f"gradient descent step (lr = {lr:.3g})",
           ylabel="0.5 · mean squared error",
           title=f"tanh MLP 1-{args.width}-{args.width}-1, 16 training points")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fit.plot(x_test[:, 0], y_test[:, 0], color="0.7", lw=4, label="sin(2x)")
    fit.scatter(x_train[:, 0], y_train[:, 0], color="k", zorder=3, s=15, label="training points")
    for name, (_, _, out) in curves.items():
        color, ls, _ = styles[name]
        fit.plot(x_test[:, 0], out[:, 0], color=color, ls=ls, lw=1.5, label=name)
    fit.set(xlabel="x", ylabel="f(x)", title=f"after {args.steps} steps")
    fit.legend(fontsize=7)
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    gap = np.max(np.abs(curves["linearized network"][2] - curves["predict.gradient_descent_mse"][2]))
    print(f"wrote {out}; final test loss: "
          + ", ".join(f"{k} {v[1][-1]:.4g}" for k, v in curves.items())
          + f"; max |linearized - predicted| on the test set {gap:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
