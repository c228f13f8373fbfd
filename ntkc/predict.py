"""Predictions of training dynamics from a kernel: neural-tangents' ``predict`` module.

Given the NTK (or NNGP) on the training set, these functions predict what gradient descent does to
the linearized network (:func:`ntkc.linearize`) in function space: in closed form for MSE
(:func:`gradient_descent_mse`), by an ODE solver for any loss (:func:`gradient_descent`), at infinite
time as a Gaussian process posterior (:func:`gp_inference`), and the largest stable learning rate
(:func:`max_learning_rate`). Signatures, units and return conventions are neural-tangents'.

Kernel layout: a kernel between outputs of shapes ``A`` and ``B`` holds the non-traced axes of both,
interleaved (``(N1, N2, X1, X2, ...)``), as :func:`ntkc.ntk_fn` returns it with the same
``trace_axes`` and ``diagonal_axes=()``. A traced kernel is read as ``Θ ⊗ I`` along the traced
axes. Time ``t`` counts steps: the absolute time is ``learning_rate · t``, and the loss is
``0.5 · mean((f - y)²)`` over all ``y_train.size`` entries, so that one unit of ``t`` is one step of
gradient descent with step ``learning_rate`` on that loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from jax.experimental import ode

from ntkc._axes import canonicalize_axes
from ntkc.empirical import check_get, kernel_tuple

__all__ = ["Gaussian", "ODEState", "gp_inference", "gradient_descent", "gradient_descent_mse",
           "max_learning_rate"]


class ODEState(NamedTuple):
    """The state :func:`gradient_descent` integrates: outputs, and momenta when ``momentum`` is set.

    Attributes:
      fx_train: training set outputs.
      fx_test: test set outputs.
      qx_train: training set auxiliary variable (the momentum's velocity).
      qx_test: test set auxiliary variable.
    """

    fx_train: jax.Array | None = None
    fx_test: jax.Array | None = None
    qx_train: jax.Array | None = None
    qx_test: jax.Array | None = None


class Gaussian(NamedTuple):
    """A ``(mean, covariance)`` pair: ``mean`` shaped like the outputs, ``covariance`` like the
    test-test kernel."""

    mean: jax.Array
    covariance: jax.Array


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How outputs shaped like ``y_train`` map to ``(rows, traced)`` matrices and back."""

    ndim: int
    trace: tuple[int, ...]
    trace_shape: tuple[int, ...]

    @classmethod
    def of(cls, y_train, trace_axes) -> "_Layout":
        trace = canonicalize_axes(trace_axes, y_train.ndim, "trace_axes")
        return cls(y_train.ndim, trace, tuple(y_train.shape[a] for a in trace))

    def rows(self, y) -> jax.Array:
        """``(M, T)``: the non-traced axes flattened into rows, the traced ones into columns."""
        y = jnp.moveaxis(y, self.trace, range(self.ndim - len(self.trace), self.ndim))
        return y.reshape((-1, math.prod(self.trace_shape)))

    def unrows(self, m, free_shape, lead=()) -> jax.Array:
        """Inverse of :meth:`rows` for ``m`` of shape ``lead + (M, T)``."""
        m = m.reshape(tuple(lead) + tuple(free_shape) + self.trace_shape)
        nf, nl = len(free_shape), len(lead)
        return jnp.moveaxis(m, range(nl + nf, nl + nf + len(self.trace)),
                            [nl + a for a in self.trace])

    def output_shape(self, free_shape) -> tuple[int, ...]:
        shape = list(free_shape)
        for a, size in zip(self.trace, self.trace_shape):
            shape.insert(a, size)
        return tuple(shape)


def _square(k, name: str) -> jax.Array:
    """An interleaved kernel ``(A1, B1, A2, B2, ...)`` as the matrix ``(A1·A2·..., B1·B2·...)``."""
    k = jnp.asarray(k)
    if k.ndim % 2:
        raise ValueError(f"{name} must have an even number of axes (interleaved pairs), got shape "
                         f"{k.shape}")
    rows, cols = math.prod(k.shape[0::2]), math.prod(k.shape[1::2])
    return jnp.transpose(k, [*range(0, k.ndim, 2), *range(1, k.ndim, 2)]).reshape(rows, cols)


def _unsquare(m, free_shape) -> jax.Array:
    """Inverse of :func:`_square` for a square matrix over ``free_shape``."""
    n = len(free_shape)
    m = m.reshape(tuple(free_shape) * 2)
    return jnp.transpose(m, [i for a in range(n) for i in (a, n + a)])


def _train_matrix(k_train_train, y_train, layout: _Layout, name="k_train_train") -> jax.Array:
    _check_train_shape(jnp.shape(k_train_train), y_train, layout, name)
    return _square(k_train_train, name)


def _check_train_shape(shape, y_train, layout: _Layout, name="k_train_train"):
    free = tuple(s for a, s in enumerate(y_train.shape) if a not in layout.trace)
    if len(shape) % 2 or shape[0::2] != free or shape[1::2] != free:
        raise ValueError(f"{name} has shape {shape}, but y_train of shape {y_train.shape} with "
                         f"trace_axes {layout.trace} needs the interleaved pairs of {free}")


def _test_matrix(k_test_train, m_train: int, name="k_test_train") -> jax.Array:
    _check_test_shape(jnp.shape(k_test_train), m_train, name)
    return _square(k_test_train, name)


def _check_test_shape(shape, m_train: int, name="k_test_train"):
    if len(shape) % 2 or math.prod(shape[1::2]) != m_train:
        raise ValueError(f"{name} has shape {shape}: its train-side axes (odd positions) must "
                         f"hold the train kernel's {m_train} entries")


def _regularize(k, diag_reg: float, absolute: bool) -> jax.Array:
    if diag_reg < 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg}")
    scale = diag_reg if absolute else diag_reg * jnp.trace(k) / k.shape[0]
    return k + scale * jnp.eye(k.shape[0], dtype=k.dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _regularized(k, diag_reg: float, absolute: bool):
    return _regularize(_square(k, "k_train_train"), diag_reg, absolute)


def _check_inputs(fx_train_0, fx_test_0, k_test_train):
    if fx_train_0 is None and fx_test_0 is None:
        raise ValueError("fx_train_0 and fx_test_0 are both None: nothing to predict")
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError("fx_test_0 is given but k_test_train is None: test predictions need the "
                         "test-train kernel")


def _expand(x, lead):
    """``x`` with ``len(lead)`` leading axes of size 1 (explicit: no implicit rank promotion)."""
    x = jnp.asarray(x)
    return x.reshape((1,) * len(lead) + x.shape)


def _pick(fx_train_0, fx_test_0, train, test):
    """neural-tangents' return convention: train, test, or both as a tuple."""
    if fx_train_0 is not None and fx_test_0 is not None:
        return train, test
    return test if fx_train_0 is None else train


# ----------------------------------------------------------------------------- MSE, closed form


def gradient_descent_mse(k_train_train, y_train, learning_rate: float = 1.0, diag_reg: float = 0.0,
                         diag_reg_absolute_scale: bool = False, trace_axes=(-1,)) -> Callable:
    """Predicts gradient descent (gradient flow) on MSE in closed form, at any time.

    Under gradient flow with step ``learning_rate`` on ``0.5 · mean((f - y)²)``, the linearized
    network's training outputs follow ``f_t - y = exp(-η t Θ / n) (f_0 - y)`` (``n = y_train.size``)
    and its test outputs ``f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹ (exp(-η t Θ / n) - I) (f_0 - y)``. The
    kernel is diagonalised once (finite ``t``) or Cholesky-factored once (``t=None``) and cached.

    Args:
      k_train_train: train-train kernel, the pairs of ``y_train``'s non-traced axes.
      y_train: training targets.
      learning_rate: the step size (``t`` is in steps).
      diag_reg: added to the kernel's diagonal: ``K + diag_reg · mean(diag K) · I``, or
        ``K + diag_reg · I`` with ``diag_reg_absolute_scale=True``.
      diag_reg_absolute_scale: see ``diag_reg``.
      trace_axes: the ``trace_axes`` the kernels were computed with (read as ``Θ ⊗ I``).

    Returns:
      ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``. ``t``: a scalar or
      an array of any shape (leading axes of the result), ``None`` for infinite time.
      ``fx_train_0``/``fx_test_0``: outputs at ``t = 0`` (``None``: not predicted). Returns
      ``fx_train_t``, ``fx_test_t`` or both as a tuple. ``k_test_train``: test-train kernel, needed
      for test predictions.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> k, y = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([[1.0], [-1.0]])
      >>> predict_fn = ntkc.predict.gradient_descent_mse(k, y)
      >>> predict_fn(None, jnp.zeros((2, 1))).tolist()   # trained to convergence
      [[1.0], [-1.0]]
    """
    y_train = jnp.asarray(y_train)
    layout = _Layout.of(y_train, trace_axes)
    _check_train_shape(jnp.shape(k_train_train), y_train, layout)
    k = _regularized(k_train_train, float(diag_reg), bool(diag_reg_absolute_scale))
    train_free = tuple(y_train.shape[a] for a in range(y_train.ndim) if a not in layout.trace)
    cache = {}

    def factor(kind):
        if kind not in cache:
            cache[kind] = _eigh(k) if kind == "eigh" else jnp.linalg.cholesky(k)
        return cache[kind]

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        _check_inputs(fx_train_0, fx_test_0, k_test_train)
        f0 = jnp.broadcast_to(jnp.asarray(0.0 if fx_train_0 is None else fx_train_0, k.dtype),
                              y_train.shape)
        k_td = None if fx_test_0 is None else _test_matrix(k_test_train, k.shape[0])
        test_free = None if k_td is None else jnp.shape(k_test_train)[0::2]
        if t is None:
            train = y_train.astype(k.dtype)
            test = None
            if k_td is not None:
                test = _mse_infinite(factor("cholesky"), k_td, f0, y_train, fx_test_0, layout,
                                     test_free)
            return _pick(fx_train_0, fx_test_0, train, test)
        train, test = _mse_finite(*factor("eigh"), k_td, f0, y_train, fx_test_0,
                                  jnp.asarray(t, k.dtype) * learning_rate, layout, train_free,
                                  test_free, fx_train_0 is not None)
        return _pick(fx_train_0, fx_test_0, train, test)

    return predict_fn


@jax.jit
def _eigh(k):
    evals, evecs = jnp.linalg.eigh(k)
    return jnp.maximum(evals, 0.0), evecs  # PSD: clip round-off below 0


@functools.partial(jax.jit, static_argnums=(5, 6))
def _mse_infinite(chol, k_td, f0, y_train, fx_test_0, layout, test_free):
    """Test outputs at t = ∞: ``f_0(x) + Θ(x, X) Θ⁻¹ (y - f_0)``."""
    alpha = jax.scipy.linalg.cho_solve((chol, True), layout.rows(y_train - f0))
    return fx_test_0 + layout.unrows(k_td @ alpha, test_free)


@functools.partial(jax.jit, static_argnums=(7, 8, 9, 10))
def _mse_finite(evals, evecs, k_td, f0, y_train, fx_test_0, s, layout, train_free, test_free,
                want_train):
    """Train and test outputs at times ``s`` (absolute), in ``Θ``'s eigenbasis."""
    lead, n = s.shape, y_train.size
    s = s.reshape(-1, 1)
    coef = evecs.T @ layout.rows(f0 - y_train)                   # (M, T) in the eigenbasis
    decay = jnp.expm1(-evals[None] * s / n)                      # (S, M)
    train = test = None
    if want_train:
        d = jnp.einsum("im,sm,mt->sit", evecs, decay, coef)
        train = _expand(f0, lead) + layout.unrows(d, train_free, lead)
    if k_td is not None:
        # Θ⁻¹ (exp(-sΘ/n) - I) per eigenvalue, with its limit -s/n at λ = 0
        small = evals <= jnp.finfo(evals.dtype).eps * jnp.max(evals) * evals.shape[0]
        safe = jnp.where(small, 1.0, evals)
        phi = jnp.where(small[None], jnp.broadcast_to(-s / n, decay.shape), decay / safe[None])
        d = jnp.einsum("ji,im,sm,mt->sjt", k_td, evecs, phi, coef)
        test = _expand(fx_test_0, lead) + layout.unrows(d, test_free, lead)
    return train, test


# ----------------------------------------------------------------------------- any loss, an ODE


def gradient_descent(loss: Callable, k_train_train, y_train, learning_rate: float = 1.0,
                     momentum: float | None = None, trace_axes=(-1,)) -> Callable:
    """Predicts gradient descent (optionally with momentum) on any loss, by an ODE solver.

    Integrates ``df/dt = -η Θ ∇_f loss(f, y_train)`` on the training outputs, and the same with the
    test-train kernel on the test outputs, with ``jax.experimental.ode.odeint``. With ``momentum``,
    the continuous heavy-ball flow in neural-tangents' units: ``t`` is scaled by ``√η`` and the
    friction is ``(momentum - 1) / √η``.

    Args:
      loss: ``loss(fx_train, y_train) -> scalar``; its gradient in ``fx_train`` drives the flow.
      k_train_train, y_train, learning_rate, trace_axes: as in :func:`gradient_descent_mse`.
      momentum: ``None`` for plain gradient descent, else the momentum coefficient.

    Returns:
      ``predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)``: ``t`` a
      scalar or an array of increasing times (in steps; leading axes of the result; infinite time
      has no ODE answer here, so ``t`` must be given). Returns train, test or both outputs as
      :func:`gradient_descent_mse` does, or an :class:`ODEState` when given one.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> k, y = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([[1.0], [-1.0]])
      >>> mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
      >>> predict_fn = ntkc.predict.gradient_descent(mse, k, y)
      >>> predict_fn(1.0, jnp.zeros((2, 1))).shape
      (2, 1)
    """
    y_train = jnp.asarray(y_train)
    layout = _Layout.of(y_train, trace_axes)
    k = _train_matrix(k_train_train, y_train, layout)
    grad_loss = jax.grad(lambda fx: loss(fx, y_train))
    if momentum is not None:
        learning_rate = learning_rate**0.5
        friction = (momentum - 1.0) / learning_rate

    def initial(state, fx_test_0, test_shape):
        if isinstance(state, ODEState):
            fx_train_0, fx_test_0, q_train, q_test = state
        else:
            fx_train_0, q_train, q_test = state, None, None
        if momentum is None and (q_train is not None or q_test is not None):
            raise ValueError("the ODEState holds momentum variables but momentum is None")
        fill = lambda x, shape: jnp.broadcast_to(jnp.asarray(0.0 if x is None else x, k.dtype), shape)
        f_train = fill(fx_train_0, y_train.shape)
        f_test = None if fx_test_0 is None else fill(fx_test_0, test_shape)
        if momentum is not None:
            q_train = fill(q_train, y_train.shape)
            q_test = None if f_test is None else fill(q_test, test_shape)
        return ODEState(f_train, f_test, q_train, q_test)

    train_free = tuple(y_train.shape[a] for a in range(y_train.ndim) if a not in layout.trace)

    # defined once, so that odeint's compiled solver is reused from call to call
    def flow(state, _, k_test_train=None):
        g = layout.rows(grad_loss(state.fx_train))
        d_train = -layout.unrows(k @ g, train_free)
        d_test = None
        if k_test_train is not None:
            d_test = -layout.unrows(_square(k_test_train, "k_test_train") @ g,
                                    k_test_train.shape[0::2])
        if momentum is None:
            return ODEState(d_train, d_test)
        d_train = d_train + friction * state.qx_train
        if d_test is not None:
            d_test = d_test + friction * state.qx_test
        return ODEState(state.qx_train, state.qx_test, d_train, d_test)

    flow_train = lambda state, t: flow(state, t)

    def predict_fn(t=None, fx_train_or_state_0=0.0, fx_test_0=None, k_test_train=None):
        is_state = isinstance(fx_train_or_state_0, ODEState)
        if is_state and fx_test_0 is not None:
            raise ValueError("fx_test_0 is part of the ODEState given; pass fx_test_0=None")
        fx_train_0 = fx_train_or_state_0.fx_train if is_state else fx_train_or_state_0
        test_0 = fx_train_or_state_0.fx_test if is_state else fx_test_0
        _check_inputs(fx_train_0, test_0, k_test_train)
        if t is None:
            raise ValueError("t=None (infinite time) cannot be integrated; pass finite times, or "
                             "use gradient_descent_mse for the MSE loss's closed form")
        test_shape = y_train.shape
        if test_0 is not None:
            _check_test_shape(jnp.shape(k_test_train), k.shape[0])
            test_shape = layout.output_shape(jnp.shape(k_test_train)[0::2])
        times = jnp.asarray(t, k.dtype) * learning_rate
        lead = times.shape
        times = times.reshape(-1)
        # odeint starts at times[0]: prepend 0 (just below it when the first time asked is 0)
        start = jnp.where(times[0] == 0, -1e-24, 0.0).astype(times.dtype)[None]
        state_0 = initial(fx_train_or_state_0, fx_test_0, test_shape)
        times = jnp.concatenate([start, times])
        if test_0 is None:
            states = ode.odeint(flow_train, state_0, times)
        else:
            states = ode.odeint(flow, state_0, times, jnp.asarray(k_test_train, k.dtype))
        states = jax.tree.map(lambda a: a[1:].reshape(lead + a.shape[1:]), states)
        if is_state:
            return states
        return _pick(fx_train_0, fx_test_0, states.fx_train, states.fx_test)

    return predict_fn


# ----------------------------------------------------------------------------- GP posterior


GETS = ("nngp", "ntk", "ntkgp")


def _kernel(k, g: str, name: str):
    """The ``g`` kernel of ``k``: ``k`` itself for an array, else its attribute ``g``."""
    if k is None or isinstance(k, (jax.Array, jnp.ndarray)) or hasattr(k, "__array__"):
        return k
    value = getattr(k, g, None)
    if value is None:
        raise ValueError(f"{name} has no {g!r} kernel; pass an array or a namedtuple with "
                         f"{g!r} (e.g. from ntkc.empirical_kernel_fn(f)(x1, x2, None, params))")
    return value


def gp_inference(k_train_train, y_train, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, trace_axes=(-1,)) -> Callable:
    """The NNGP / NTK / NTKGP "posterior" on a test set: Gaussian mean and covariance.

    NNGP: the posterior of a GP with the NNGP covariance (an infinitely wide Bayesian network).
    NTK: the distribution of an infinite ensemble trained to convergence by gradient flow on MSE
    (mean ``Θ_*ᵀ Θ⁻¹ y``; covariance ``K_** + Θ_* Θ⁻¹ K Θ⁻¹ Θ_*ᵀ - (Θ_* Θ⁻¹ K_*ᵀ + h.c.)``, which
    needs both kernels). NTKGP: the posterior of a GP with the NTK covariance.

    Args:
      k_train_train: train-train kernel: an array (used for every mode) or a namedtuple with
        ``nngp`` and/or ``ntk`` fields, such as :func:`ntkc.empirical_kernel_fn` returns.
      y_train: training targets.
      diag_reg, diag_reg_absolute_scale, trace_axes: as in :func:`gradient_descent_mse`.

    Returns:
      ``predict_fn(get=None, k_test_train=None, k_test_test=None)``. ``get``: ``'nngp'``,
      ``'ntk'``, ``'ntkgp'``, a tuple of them, or ``None`` for ``('nngp', 'ntk')``. Each mode
      gives the mean, or a :class:`Gaussian` ``(mean, covariance)`` when ``k_test_test`` is given;
      a string ``get`` returns it alone, a tuple (or ``None``) a namedtuple ``Gaussians``.
      ``k_test_train=None`` predicts on the training set (``N(y_train, 0)``).

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> k, y = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([[1.0], [-1.0]])
      >>> post = ntkc.predict.gp_inference(k, y)("nngp", jnp.array([[1.0, 0.0]]), jnp.array([[1.0]]))
      >>> post.mean.shape, post.covariance.shape
      ((1, 1), (1, 1))
    """
    y_train = jnp.asarray(y_train)
    layout = _Layout.of(y_train, trace_axes)
    factors, weights = {}, {}

    def solve(g: str, b):
        if g not in factors:
            k = _train_matrix(_kernel(k_train_train, g, "k_train_train"), y_train, layout)
            factors[g] = jax.scipy.linalg.cho_factor(
                _regularize(k, diag_reg, diag_reg_absolute_scale))
        return jax.scipy.linalg.cho_solve(factors[g], b)

    def k_inv_y(g: str):
        if g not in weights:
            weights[g] = solve(g, layout.rows(y_train))
        return weights[g]

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        single, names = check_get(get, GETS, default=("nngp", "ntk"))
        out = {}
        for g in names:
            kind = "ntk" if g == "ntkgp" else g
            prior = "ntk" if g == "ntkgp" else "nngp"   # the covariance at initialisation
            k_dd = _train_matrix(_kernel(k_train_train, kind, "k_train_train"), y_train, layout)
            if k_test_train is None:
                mean = y_train.astype(k_dd.dtype)
                cov = jnp.zeros_like(jnp.asarray(_kernel(k_train_train, kind, "k_train_train")))
                out[g] = mean if k_test_test is None else Gaussian(mean, cov)
                continue
            raw = _kernel(k_test_train, kind, "k_test_train")
            free = jnp.shape(raw)[0::2]
            k_td = _test_matrix(raw, k_dd.shape[0])
            mean = layout.unrows(k_td @ k_inv_y(kind), free)
            if k_test_test is None:
                out[g] = mean
                continue
            k_tt = _square(_kernel(k_test_test, prior, "k_test_test"), "k_test_test")
            p_td = _test_matrix(_kernel(k_test_train, prior, "k_test_train"), k_dd.shape[0])
            if g == "ntk":
                k_prior = _train_matrix(_kernel(k_train_train, "nngp", "k_train_train"), y_train,
                                        layout)
                a = solve("ntk", k_td.T)                                  # Θ⁻¹ Θ_*ᵀ
                cross = k_td @ solve("ntk", p_td.T)                       # Θ_* Θ⁻¹ K_*ᵀ
                cov = k_tt + a.T @ k_prior @ a - cross - cross.T
            else:
                cov = k_tt - k_td @ solve(kind, p_td.T)
            out[g] = Gaussian(mean, _unsquare(cov, free))
        if single:
            return out[names[0]]
        return kernel_tuple("Gaussians", names)(*(out[g] for g in names))

    return predict_fn


# ----------------------------------------------------------------------------- learning rate


def max_learning_rate(ntk_train_train, y_train_size: int | None = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """The largest learning rate for which gradient descent on MSE converges on this kernel.

    For the loss ``‖f - y‖² / (2 n)`` (``n = y_train_size``), one step multiplies the error by
    ``I - η Θ / n``, a contraction while ``η < 2 n / λ_max(Θ)``; with momentum the bound is
    ``2 (1 + momentum) n / λ_max``.

    Args:
      ntk_train_train: the train-train NTK (interleaved pairs; any even number of axes).
      y_train_size: ``y_train.size``; ``None`` takes the kernel's side, i.e. assumes
        ``trace_axes=()``.
      momentum: the momentum coefficient.
      eps: added to ``λ_max`` to avoid dividing by zero.

    Returns:
      The learning rate, a float.

    Example:
      >>> import jax.numpy as jnp, ntkc
      >>> ntkc.predict.max_learning_rate(jnp.array([[2.0, 0.0], [0.0, 1.0]]), eps=0.0)
      2.0
    """
    k = np.asarray(ntk_train_train, np.float64)   # on the host, as neural-tangents does on CPU
    if k.ndim % 2 or math.prod(k.shape[0::2]) != math.prod(k.shape[1::2]):
        raise ValueError(f"ntk_train_train must be a square kernel (interleaved pairs), got shape "
                         f"{k.shape}")
    side = math.prod(k.shape[0::2])
    k = np.transpose(k, [*range(0, k.ndim, 2), *range(1, k.ndim, 2)]).reshape(side, side)
    n = side if y_train_size is None else y_train_size
    lam = np.linalg.eigvalsh(k)[-1]
    return float(2 * (1 + momentum) * n / (lam + eps))
