"""Profile-likelihood intervals, as lme4's profile() + confint(): on the ML deviance, in the sd/cor parametrization.

For each parameter ψᵢ, ζ(v) = sign(v − ψ̂ᵢ) √(d(v) − d̂), where d(v) is the ML deviance minimized over all the
other parameters with ψᵢ = v, and d̂ the ML deviance at the optimum. The interval is where |ζ| ≤ z_{(1+level)/2}.
lme4 profiles the ML deviance for REML fits too (its devfun2 refits by ML), so a REML fit is refitted by ML here.
lme4 interpolates ζ with splines; we find the endpoints by root finding (Brent) on ζ itself.

* Fixed effect βⱼ = v: the model with xⱼ moved into the offset, y − v xⱼ, profiled over θ (σ and the other β
  in closed form). Its statistics are linear maps of [Z X y]ᵀW[Z X y]: F' = F M.
* Variance parameters (sd, cor per term, σ): d(θ, σ) = log|L_Z|² + n log(2πσ²) + r²(θ)/σ² − Σ log w, with
  β profiled out, minimized over unconstrained coordinates (log sd, atanh cor, log σ) with one coordinate held.
* GLMMs: the fit's own objective (Laplace, or the nAGQ deviance) over (log sd, atanh cor, β), minimized with one
  coordinate held (σ = 1); the conditional modes come from PIRLS inside each evaluation, as in the fit. A
  dispersion family's log d is one more coordinate of the same objective, profiled like the others (its interval
  is exp of the ends on the log scale).
* cs() / ar1() models: on the structures' own coordinates (glmmTMB's), see `structured_profile_intervals`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import optimize, stats

from .._config import float64
from .._errors import ConvergenceWarning
from .._warn import user_stacklevel
from ..core._blocks import Blocks
from ..core._covariance import theta_diagonal_mask
from ..core._structures import is_structured
from ._confint import (dispersion_name, interval_columns, parameter_names, require_laplace, variance_parameter_names,
                       variance_parameters)
from ..core._linalg import factorize
from ..core._lmm import LinearProblem, profiled_deviance
from ..optim._optimize import host_bfgs_minimize
from ..core._agq import agq_deviance
from ..core._pirls import laplace_deviance
from .._compile import jit

__all__ = ["profile_intervals", "profile_traces", "profile_coordinates", "ProfileCoordinate"]

_LOG_2PI = float(np.log(2 * np.pi))


# ---------------------------------------------------------------------------------------------- fixed effects
def _moved_to_offset(problem: LinearProblem, select, column, value) -> LinearProblem:
    """Statistics of [Z X₋ⱼ (y − v xⱼ)]: F' = F M with M = [S, e_y − v eⱼ] (S selects the other columns)."""
    f = problem.blocks.tail_ff.shape[0]
    last = jnp.zeros((f,), dtype=select.dtype).at[-1].set(1.0) - value * column
    M = jnp.concatenate([select, last[:, None]], axis=1)
    b = problem.blocks
    blocks = Blocks(
        diag=b.diag, offdiag=b.offdiag, entries=b.entries, tail_zz=b.tail_zz,
        fixed=tuple(jnp.einsum("fql,fg->gql", fx, M) for fx in b.fixed),
        tail_fz=M.T @ b.tail_fz, tail_ff=M.T @ b.tail_ff @ M,
    )
    return LinearProblem(structure=problem.structure, blocks=blocks, n=problem.n, p=problem.p - 1,
                         sum_log_w=problem.sum_log_w)


@jit
def _fixed_held(theta, problem, select, column, value):
    return jax.value_and_grad(profiled_deviance)(theta, _moved_to_offset(problem, select, column, value), False)


def _fixed_profile(theta0, problem, select, column, value) -> float:
    """The ML deviance with fixed effect `column` moved into the offset at `value`, minimized over θ by the fits'
    host BFGS around one compiled program (`_HeldSearch`'s reason)."""
    def value_and_grad(theta):
        v, g = _fixed_held(np.asarray(theta), problem, select, column, np.float64(value))
        return float(v), np.asarray(g, dtype=np.float64)

    start = np.asarray(theta0, dtype=np.float64)
    return _minimum(value_and_grad, start, value_and_grad(start))


# ---------------------------------------------------------------------------------------------- variance parameters
def _theta_sigma(z, qs):
    """Unconstrained coordinates (per term: log sd / atanh cor in θ's order; then log σ) → (θ, σ)."""
    sigma = jnp.exp(z[-1])
    thetas, pos = [], 0
    for q in qs:
        k = q * (q + 1) // 2
        zt = z[pos : pos + k]
        sd = jnp.zeros((q,), dtype=z.dtype)
        R = jnp.eye(q, dtype=z.dtype)
        for i, (r, c) in enumerate((r, c) for c in range(q) for r in range(c, q)):
            if r == c:
                sd = sd.at[r].set(jnp.exp(zt[i]))
            else:
                rho = jnp.tanh(zt[i])
                R = R.at[r, c].set(rho).at[c, r].set(rho)
        T = (sd / sigma)[:, None] * jnp.linalg.cholesky(R)
        thetas += [T[r, c] for c in range(q) for r in range(c, q)]
        pos += k
    return jnp.stack(thetas), sigma


def _ml_deviance_sd_cor(z, problem: LinearProblem, qs):
    theta, sigma = _theta_sigma(z, qs)
    factor = factorize(theta, problem.blocks, problem.structure)
    r2 = factor.tail[-1, -1] ** 2
    dev = factor.logdet_z(problem.structure.m_z) + problem.n * (_LOG_2PI + 2 * jnp.log(sigma)) + r2 / sigma**2
    dev = dev - problem.sum_log_w
    return jnp.where(jnp.isfinite(dev), dev, jnp.inf)


_SCALE_RANGE = 10.0  # how far (on the log / atanh scale) a profile's inner search may move a variance parameter


class _HeldSearch:
    """One coordinate's profile: value ↦ the minimum of the objective over the other coordinates with z[index]
    held at value. A host BFGS (the fits' step, `_bfgs`) around one compiled program `program(z, index, value,
    *args) -> (objective, gradient)` of the objective with z[index] set to value (its gradient there is 0); index
    and value are arguments, so one compile serves every coordinate and every point. (An optimizer loop compiled
    around the objective, PIRLS inside for a GLMM, took several times as long to compile as the profile ran.)

    The search starts from the local quadratic model at z0 (the estimate, `_off_boundary`): the free coordinates'
    Hessian H_ff and the cross column H_fi by central differences of the exact gradient (2k gradients, once per
    coordinate), so that a point starts at the linear prediction z0_f − H_ff⁻¹ H_fi (value − z0_i) of where the
    other coordinates go, with H_ff⁻¹ as BFGS's first inverse Hessian. Where H_ff is not positive definite (a
    variance at its boundary) or the prediction is no better than z0 itself, the search starts at z0 with the
    identity as a fit's does.

    `scaled` marks the coordinates on a log scale (standard deviations, σ, d); the search stays within
    `_SCALE_RANGE` of z0 in them (`_in_range`).
    Where a variance goes to its boundary (σ → 0 against a term that takes over the residual variance, say) the
    deviance decreases towards its limit ever more slowly along a flat ridge, BFGS's steps there grow without
    bound, and at relative scales beyond ~e³⁰ the factorization loses the precision the deviance needs (values
    far below the optimum's came back); e^±10 around the estimate is the boundary for any printed digit."""

    def __init__(self, program, z0, index: int, scaled, *args):
        self.program, self.index, self.args = program, int(index), args
        self.z0 = np.asarray(z0, dtype=np.float64)
        self.scaled = np.asarray(scaled, dtype=bool) & (np.arange(self.z0.size) != self.index)  # not the held one
        self._model = None

    def _call(self, z, value):
        z = np.asarray(z, dtype=np.float64)
        if not _in_range(z, self.z0, self.scaled):
            return math.inf, np.zeros_like(z)  # a rejected trial: the step shrinks
        v, g = self.program(z, np.int32(self.index), np.float64(value), *self.args)
        return float(v), np.asarray(g, dtype=np.float64)

    def _local_model(self, delta: float = 1e-5):
        i, z0, k = self.index, self.z0, self.z0.size
        columns = []
        for j in range(k):
            step = delta * np.eye(k)[j]
            plus = self._call(z0 + step, z0[i] + step[i])[1]
            minus = self._call(z0 - step, z0[i] - step[i])[1]
            columns.append((plus - minus) / (2.0 * delta))
        H = np.stack(columns, axis=1)
        free = np.arange(k) != i
        H_ff = 0.5 * (H[np.ix_(free, free)] + H[np.ix_(free, free)].T)
        try:
            if not np.all(np.isfinite(H)):
                raise np.linalg.LinAlgError
            np.linalg.cholesky(H_ff)
        except np.linalg.LinAlgError:
            return None
        inv_ff = np.linalg.inv(H_ff)
        inv_hess = np.eye(k)
        inv_hess[np.ix_(free, free)] = inv_ff
        return inv_hess, free, -inv_ff @ H[free, i]

    def __call__(self, value) -> float:
        value = float(value)
        start = self.z0.copy()
        start[self.index] = value
        if self._model is None:
            self._model = self._local_model() or False
        inv_hess = None
        f, g = self._call(start, value)
        if self._model:
            inv_hess, free, slope = self._model
            predicted = start.copy()
            predicted[free] += slope * (value - self.z0[self.index])
            f_pred, g_pred = self._call(predicted, value)
            if np.isfinite(f_pred) and np.all(np.isfinite(g_pred)) and f_pred < f:
                start, f, g = predicted, f_pred, g_pred
            else:
                inv_hess = None
        return _minimum(lambda z: self._call(z, value), start, (f, g), inv_hess)


def _minimum(value_and_grad, x, known, inv_hess=None) -> float:
    return float(host_bfgs_minimize(value_and_grad, x, known=known, inv_hess=inv_hess).value)


def _in_range(z, center, scaled) -> bool:
    return not np.any(scaled & (np.abs(z - center) > _SCALE_RANGE))


@jit(static_argnames=("qs",))
def _variance_held(z, index, value, problem, qs):
    return jax.value_and_grad(lambda z: _ml_deviance_sd_cor(z.at[index].set(value), problem, qs))(z)




# ---------------------------------------------------------------------------------------------- GLMMs
def _glmm_deviance_sd_cor(z, problem, qs, nodes, node_weights):
    """The GLMM objective at z = (log sd / atanh cor per term in θ's order, β), σ = 1."""
    nt = problem.structure.n_theta
    theta, _ = _theta_sigma(jnp.concatenate([z[:nt], jnp.zeros((1,), dtype=z.dtype)]), qs)
    x = jnp.concatenate([theta, z[nt:]])
    # one Newton step after PIRLS keeps the value and the gradient exact (`_pirls.mode_at`), all the search needs
    dev = (laplace_deviance(x, problem, newton_steps=1) if nodes is None
           else agq_deviance(x, problem, nodes, node_weights, newton_steps=1))
    return jnp.where(jnp.isfinite(dev), dev, jnp.inf)


@jit(static_argnames=("qs",))
def _glmm_held(z, index, value, problem, qs, nodes, node_weights):
    return jax.value_and_grad(
        lambda z: _glmm_deviance_sd_cor(z.at[index].set(value), problem, qs, nodes, node_weights))(z)




# ---------------------------------------------------------------------------------------------- intervals
def _endpoint(zeta, u_hat, step, target, lower_limit, upper_limit):
    """u with ζ(u) = target, searching outward from û (ζ(û) = 0) in steps that double; the limit if never reached."""
    direction = np.sign(target)
    limit = upper_limit if direction > 0 else lower_limit
    # the root to 1e-8 of the first step (a standard error's scale) rather than to 1e-10 absolute: a separated
    # GLMM's intercept has steps of ~1e5, where the absolute tolerance cost 34-50 evaluations an endpoint
    xtol = max(1e-10, 1e-8 * abs(step))
    a, h = u_hat, step
    for _ in range(60):
        b = u_hat + direction * h
        if (direction > 0 and b >= limit) or (direction < 0 and b <= limit):
            if abs(zeta(limit)) < abs(target):
                return limit
            b = limit
        zb = zeta(b)
        if abs(zb) >= abs(target) and np.sign(zb) == direction:
            return optimize.brentq(lambda u: zeta(u) - target, min(a, b), max(a, b), xtol=xtol, rtol=1e-12)
        a, h = b, 2 * h
    return np.nan


# A standard deviation below this fraction of its scale is at the boundary (lme4's singularity tolerance on θ)
_BOUNDARY_SD = float(np.log(1e-4))


def _boundary_sd_interval(zeta, log_scale, target):
    """(0, upper) for a standard deviation estimated at (or next to) 0, as lme4 reports it. Its deviance is flat
    from the estimate (log sd far below any scale of the data) up to about the data's scale, so the search for the
    upper end starts at the boundary's edge there (1e-4 of the scale) rather than at the estimate, whose
    neighbourhood would never see the deviance rise."""
    start = log_scale + _BOUNDARY_SD
    hi = _endpoint(zeta, start, 0.5, target, start, log_scale + 30.0)
    return 0.0, float(np.exp(hi))


def _variance_interval(zeta, z_hat_i, is_cor, target, log_scale=0.0):
    """(lower, upper) of one sd or cor from its ζ on the unconstrained scale; a bound that the deviance never
    reaches is the parameter's own limit (sd 0, cor ±1). log_scale: log of the scale the sd is measured against
    (σ for a linear model, 1 on a GLMM's link scale)."""
    if not is_cor and z_hat_i < log_scale + _BOUNDARY_SD:
        return _boundary_sd_interval(zeta, log_scale, target)
    lim = (-20.0, 20.0) if is_cor else (z_hat_i - 30.0, z_hat_i + 30.0)
    lo = _endpoint(zeta, z_hat_i, 0.1, -target, *lim)
    hi = _endpoint(zeta, z_hat_i, 0.1, target, *lim)
    transform = np.tanh if is_cor else np.exp
    lo_v, hi_v = transform(lo), transform(hi)
    if not is_cor and lo == lim[0]:
        lo_v = 0.0  # the deviance never rises enough before the variance reaches 0
    if is_cor:
        lo_v = -1.0 if lo == lim[0] else lo_v
        hi_v = 1.0 if hi == lim[1] else hi_v
    return lo_v, hi_v


def _off_boundary(z, is_sd, log_scale):
    """Starting coordinates for the profiles' inner searches: a log sd at the boundary (far below its scale) moved
    to 1e-2 of the scale. There the deviance is flat in log sd, so a search started at the estimate could never
    leave it, even where holding another parameter makes a positive variance better; started off it, the search
    returns to the boundary where that is best."""
    floor = log_scale + _BOUNDARY_SD
    return np.where(is_sd & (z < floor), log_scale + np.log(1e-2), z)


def _unconstrained(psi_hat, is_cor):
    return np.where(is_cor, np.arctanh(np.clip(psi_hat, -1 + 1e-12, 1 - 1e-12)), np.log(np.maximum(psi_hat, 1e-300)))


@dataclasses.dataclass(frozen=True)
class ProfileCoordinate:
    """One profiled parameter: zeta(u) is the signed root of the deviance's rise with the parameter held at u on
    its unconstrained scale (log for a standard deviation or σ, atanh for a correlation, itself for a fixed
    effect); u_hat is the estimate there, step the first step of the search for an endpoint."""

    name: str
    kind: str  # "log" | "cor" | "fixed"
    zeta: Callable[[float], float]
    u_hat: float
    step: float
    log_scale: float = 0.0  # a standard deviation's scale (log σ for a linear model's sd_ rows), see _variance_interval
    transform: Callable | None = None  # kind "transf" (a cs() / ar1() correlation's transform): u → ρ
    limits: tuple | None = None  # and ρ's range

    def natural(self, u):
        """The parameter's value at unconstrained u."""
        if self.transform is not None:
            return self.transform(u)
        return np.tanh(u) if self.kind == "cor" else np.exp(u) if self.kind == "log" else u


def _zeta_of(evaluate, u_hat, d_hat):
    def zeta(u):
        return np.sign(u - u_hat) * np.sqrt(max(float(evaluate(u)) - d_hat, 0.0))

    return zeta


def _glmm_coordinates(fit, wanted) -> list[ProfileCoordinate]:
    from ..core._agq import gauss_hermite
    from ..fit._glmm import glmm_problem

    model = fit.model
    problem, qs, nt = glmm_problem(model), model.qs, model.n_theta
    nodes = node_weights = None
    if fit.method == "agq":
        z, w = gauss_hermite(int(fit.extra["nagq"]))
        nodes, node_weights = jnp.asarray(z), jnp.asarray(w)
    d_name = dispersion_name(model)
    var_names = variance_parameter_names(model)[:nt]  # a dispersion family's d is the last coordinate of z
    is_cor = np.array([n.startswith("cor_") for n in var_names])
    x_names = list(model.design.x_names)
    beta_hat, se = fit.fixef[x_names].to_numpy(), fit.se[x_names].to_numpy()
    log_d = [np.log(fit.dispersion)] if d_name else []
    z_hat = np.concatenate([_unconstrained(variance_parameters(fit.theta, None, qs)[0], is_cor), beta_hat, log_d])
    is_sd = np.r_[~is_cor, np.zeros(len(x_names) + len(log_d), bool)]
    scaled = np.r_[~is_cor, np.zeros(len(x_names), bool), np.ones(len(log_d), bool)]  # the log scales
    z_hat_j = jnp.asarray(_off_boundary(z_hat, is_sd, 0.0))
    out = []
    for i, name in enumerate(var_names + x_names + ([d_name] if d_name else [])):
        if name not in wanted:
            continue

        evaluate = _HeldSearch(_glmm_held, z_hat_j, i, scaled, problem, qs, nodes, node_weights)
        zeta = _zeta_of(evaluate, z_hat[i], fit.objective)
        if i >= nt + len(x_names):  # log d: never at a boundary (its scale is its own estimate)
            out.append(ProfileCoordinate(name, "log", zeta, float(z_hat[i]), 0.1, log_scale=float(z_hat[i])))
            continue
        kind = ("cor" if is_cor[i] else "log") if i < nt else "fixed"
        step = 0.1 if i < nt else float(se[i - nt])
        out.append(ProfileCoordinate(name, kind, zeta, float(z_hat[i]), step))
    return out


def _linear_coordinates(fit, wanted) -> list[ProfileCoordinate]:
    model = fit.model
    ml = fit if fit.method == "ml" else model.fit(method="ml", warn=False)
    problem, qs, d_hat = model.linear_problem, model.qs, ml.objective
    var_names = variance_parameter_names(model)
    is_cor = np.array([n.startswith("cor_") for n in var_names])
    z_hat = _unconstrained(variance_parameters(ml.theta, ml.sigma, qs)[0], is_cor)
    log_sigma = float(np.log(ml.sigma))
    is_sd = ~is_cor & (np.asarray(var_names) != "sigma")
    z_hat_j = jnp.asarray(_off_boundary(z_hat, is_sd, log_sigma))
    out = []
    for i, name in enumerate(var_names):
        if name in wanted:
            evaluate = _HeldSearch(_variance_held, z_hat_j, i, ~is_cor, problem, qs)
            kind = "cor" if is_cor[i] else "log"
            out.append(ProfileCoordinate(name, kind, _zeta_of(evaluate, z_hat[i], d_hat), float(z_hat[i]), 0.1,
                                         log_scale=log_sigma if name != "sigma" else 0.0))
    x_names = list(model.design.x_names)
    p = len(x_names)
    # θ off the boundary, for the same reason as `_off_boundary`
    theta_ml = jnp.asarray(np.where(theta_diagonal_mask(qs) & (ml.theta < 1e-4), 1e-2, ml.theta))
    beta_hat, se = ml.fixef[x_names].to_numpy(), ml.se[x_names].to_numpy()
    for j, name in enumerate(x_names):
        if name not in wanted:
            continue
        select, column = _held_fixed_effect(p, j)

        def evaluate(v, sel_j=jnp.asarray(select), col_j=jnp.asarray(column)):
            return _fixed_profile(theta_ml, problem, sel_j, col_j, v)

        out.append(ProfileCoordinate(name, "fixed", _zeta_of(evaluate, beta_hat[j], d_hat), float(beta_hat[j]),
                                     float(se[j])))
    return out


def profile_coordinates(fit, names=None) -> list[ProfileCoordinate]:
    """The profiled parameters of `fit` (all, or those in `names`), in confint's row order."""
    require_laplace(fit, "confint(method='profile')")
    all_names = parameter_names(fit.model)
    wanted = all_names if names is None else list(names)
    if is_structured(fit.model.structures):  # a row a structure's coordinate determines names that coordinate
        sources = _row_sources(fit.model)
        coords = _structured_coordinates(fit, {sources.get(n, (n, 1))[0] for n in wanted})
    else:
        coords = _linear_coordinates(fit, wanted) if fit.model.is_gaussian else _glmm_coordinates(fit, wanted)
    order = {n: k for k, n in enumerate(all_names)}
    return sorted(coords, key=lambda c: order[c.name])


def _coordinate_interval(coord: ProfileCoordinate, target: float):
    if coord.kind == "fixed":
        ends = (_endpoint(coord.zeta, coord.u_hat, coord.step, -target, -np.inf, np.inf),
                _endpoint(coord.zeta, coord.u_hat, coord.step, target, -np.inf, np.inf))
    else:
        ends = _variance_interval(coord.zeta, coord.u_hat, coord.kind == "cor", target, coord.log_scale)
    return tuple(_unbounded_if_not_reached(coord.name, end, side) for end, side in zip(ends, (-1, 1)))


def _unbounded_if_not_reached(name: str, end: float, side: int) -> float:
    """An end the deviance never rose to (the search gave up: a flat profile, as under separation) is ±inf, with
    a warning, rather than a silent NaN."""
    if not np.isnan(end):
        return end
    warnings.warn(f"the profile of {name} never rises to the interval's level on its {'upper' if side > 0 else 'lower'} "
                  "side (the deviance is flat there: separated or unidentified fixed effects?), so that end is "
                  f"{'+' if side > 0 else '-'}inf", ConvergenceWarning, stacklevel=user_stacklevel())
    return side * np.inf


def profile_intervals(fit, level: float, names=None, **_) -> pd.DataFrame:
    if is_structured(fit.model.structures):
        require_laplace(fit, "confint(method='profile')")
        return structured_profile_intervals(fit, level, names)
    target = stats.norm.ppf((1.0 + level) / 2.0)
    coords = profile_coordinates(fit, names)
    return pd.DataFrame([_coordinate_interval(c, target) for c in coords], index=[c.name for c in coords],
                        columns=interval_columns(level))


def _trace_range(coord: ProfileCoordinate, zeta_max: float):
    """Unconstrained (low, high) where |ζ| reaches zeta_max, clipped where the deviance never rises that far
    (4 log units from the estimate for an sd, |cor| ≤ 0.999, 20 standard errors for a fixed effect: a flat
    profile, as under separation, is drawn flat rather than searched without end)."""
    if coord.kind == "fixed":
        lim = (coord.u_hat - 20.0 * coord.step, coord.u_hat + 20.0 * coord.step)
    else:
        lim = (-20.0, 20.0) if coord.kind == "cor" else (coord.u_hat - 30.0, coord.u_hat + 30.0)
    low = _endpoint(coord.zeta, coord.u_hat, coord.step, -zeta_max, *lim)
    high = _endpoint(coord.zeta, coord.u_hat, coord.step, zeta_max, *lim)
    if coord.kind == "cor":
        return max(low, -np.arctanh(0.999)), min(high, np.arctanh(0.999))
    if coord.kind == "log":
        return max(low, coord.u_hat - 4.0), min(high, coord.u_hat + 4.0)
    return low, high


@float64
def profile_traces(fit, names=None, level: float = 0.99, n_points: int = 15) -> pd.DataFrame:
    """lme4's as.data.frame(profile(fit)) in long form: columns `parameter`, `value` and `zeta`, n_points values
    per parameter evenly spread (on its unconstrained scale) over where |ζ| ≤ qnorm((1 + level) / 2), plus the
    estimate (ζ = 0); rows in confint's parameter order, values increasing."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if int(n_points) < 3:
        raise ValueError(f"n_points must be at least 3, got {n_points!r}")
    zeta_max = stats.norm.ppf((1.0 + level) / 2.0)
    frames = []
    for coord in profile_coordinates(fit, names):
        low, high = _trace_range(coord, zeta_max)
        grid = np.linspace(low, high, int(n_points))
        grid = np.sort(np.append(grid[np.abs(grid - coord.u_hat) > 1e-6 * (high - low)], coord.u_hat))
        zeta = np.array([0.0 if u == coord.u_hat else coord.zeta(u) for u in grid])
        frames.append(pd.DataFrame({"parameter": coord.name, "value": coord.natural(grid), "zeta": zeta}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- cs() / ar1() models
# Profiles on the structures' own coordinates (glmmTMB's: log sd on the response's scale, the correlation's
# transform), one coordinate per structure parameter; an unstructured term beside them keeps the sd/cor
# coordinates above, and log σ closes a linear model's z. Each coordinate's interval is mapped onto the rows
# confint reports for every model (the sds and correlations of σ² T Tᵀ): a cs() correlation fills each of the
# term's cor_ rows, an ar1() sd every sd_ row and its φ the cor_ rows at lag k as φ^k.
def _structured_theta(z, structures, log_sigma):
    """z's covariance part (per term: ψ with log sds on the response's scale, or an unstructured term's
    log sd / atanh cor) → θ relative to σ = exp(log_sigma)."""
    from ..core._structures import Structure

    thetas, pos = [], 0
    for s in structures:
        zt = z[pos:pos + s.n_params]
        if s.kind == "us":
            thetas.append(_theta_sigma(jnp.concatenate([zt, log_sigma[None]]), (s.q,))[0])
        else:
            n_sd = s.q if s.kind == "cs" else 1
            thetas.append(Structure(s.kind, s.q).psi_to_theta(zt.at[:n_sd].add(-log_sigma)))
        pos += s.n_params
    return jnp.concatenate(thetas)


def _structured_ml(z, problem, structures):
    """The ML deviance at z = (covariance coordinates, log σ), β profiled out."""
    log_sigma = z[-1]
    sigma = jnp.exp(log_sigma)
    factor = factorize(_structured_theta(z[:-1], structures, log_sigma), problem.blocks, problem.structure)
    r2 = factor.tail[-1, -1] ** 2
    dev = factor.logdet_z(problem.structure.m_z) + problem.n * (_LOG_2PI + 2 * log_sigma) + r2 / sigma**2
    return jnp.where(jnp.isfinite(dev - problem.sum_log_w), dev - problem.sum_log_w, jnp.inf)


def _structured_glmm(z, problem, structures, k):
    theta = _structured_theta(z[:k], structures, jnp.zeros((), dtype=z.dtype))
    dev = laplace_deviance(jnp.concatenate([theta, z[k:]]), problem, newton_steps=1)
    return jnp.where(jnp.isfinite(dev), dev, jnp.inf)


@jit(static_argnames=("structures", "linear", "k"))
def _structured_held(z, index, value, problem, structures, linear: bool, k: int):
    def held(z):
        z = z.at[index].set(value)
        return _structured_ml(z, problem, structures) if linear else _structured_glmm(z, problem, structures, k)

    return jax.value_and_grad(held)(z)




def _structured_fixed_deviance(psi, problem, structures):
    from ..core._structures import psi_to_theta

    return profiled_deviance(psi_to_theta(psi, structures), problem, False)


@jit(static_argnames=("structures",))
def _structured_fixed_held(psi, problem, select, column, value, structures):
    return jax.value_and_grad(_structured_fixed_deviance)(psi, _moved_to_offset(problem, select, column, value),
                                                          structures)


def _log_scale_mask(structures) -> np.ndarray:
    """Which coordinates of ψ are log standard deviations (cs(): the first q; ar1(): the first)."""
    def one(s):
        if s.kind == "us":
            return np.zeros(s.n_params, bool)
        return np.arange(s.n_params) < (s.q if s.kind == "cs" else 1)

    return np.concatenate([one(s) for s in structures])


def _structured_fixed_profile(psi0, problem, select, column, value, structures) -> float:
    """The ML deviance with the fixed effect moved into the offset at `value`, minimized over ψ by the host BFGS
    from the estimate, within `_SCALE_RANGE` of it on the log sds (see `_HeldSearch`)."""
    center, scaled = np.asarray(psi0, dtype=np.float64), _log_scale_mask(structures)

    def value_and_grad(psi):
        if not _in_range(psi, center, scaled):
            return math.inf, np.zeros_like(psi)
        v, g = _structured_fixed_held(np.asarray(psi), problem, select, column, np.float64(value), structures)
        return float(v), np.asarray(g, dtype=np.float64)

    return _minimum(value_and_grad, center, value_and_grad(center))


def _rho_transform(structure):
    """The correlation's transform of a cs() or ar1() term: unconstrained t → ρ (cs) or φ (ar1), and ρ's range."""
    if structure.kind == "cs":
        a = 1.0 / (structure.q - 1)
        return (lambda t: 1.0 / (1.0 + np.exp(-np.asarray(t))) * (1.0 + a) - a), (-a, 1.0)
    return (lambda t: np.asarray(t) / np.sqrt(1.0 + np.asarray(t) ** 2)), (-1.0, 1.0)


def _structured_terms(model):
    """Per term: (structure, group, columns, its coordinates as (name, kind)) in z's order."""
    d = model.design
    out = []
    for s, grp, t in zip(model.structures, d.group_names, d.terms):
        cols = t.column_names
        if s.kind == "us":
            coords = [(f"sd_{cols[r]}|{grp}", "log") if r == c else (f"cor_{cols[r]}.{cols[c]}|{grp}", "cor")
                      for c in range(s.q) for r in range(c, s.q)]
        else:
            sds = cols if s.kind == "cs" else cols[:1]
            coords = [(f"sd_{c}|{grp}", "log") for c in sds]
            if s.n_params > len(sds):
                coords.append((f"cor_{cols[1]}.{cols[0]}|{grp}", "transf"))
        out.append((s, grp, cols, coords))
    return out


def _row_sources(model) -> dict:
    """confint's row → (the coordinate whose interval gives it, the power of an ar1() lag)."""
    sources = {}
    for s, grp, cols, coords in _structured_terms(model):
        for r, c in [(r, c) for c in range(s.q) for r in range(c, s.q)]:
            row = f"sd_{cols[r]}|{grp}" if r == c else f"cor_{cols[r]}.{cols[c]}|{grp}"
            if s.kind == "us" or (s.kind == "cs" and r == c):
                sources[row] = (row, 1)
            elif r == c:
                sources[row] = (f"sd_{cols[0]}|{grp}", 1)
            else:
                sources[row] = (f"cor_{cols[1]}.{cols[0]}|{grp}", r - c if s.kind == "ar1" else 1)
    return sources


def _structured_z_hat(fit, sigma):
    """The fit's covariance coordinates (see `_structured_theta`), σ = sigma (1 for a GLMM)."""
    model, parts, pos, psi_pos = fit.model, [], 0, 0
    psi = fit.extra["psi"]
    for s, _, _, coords in _structured_terms(model):
        k = s.q * (s.q + 1) // 2
        if s.kind == "us":
            values = variance_parameters(fit.theta[pos:pos + k], sigma, (s.q,))[0][:k]
            parts.append(_unconstrained(values, np.array([kind == "cor" for _, kind in coords])))
        else:
            block = np.array(psi[psi_pos:psi_pos + s.n_params], dtype=np.float64)
            block[:s.q if s.kind == "cs" else 1] += np.log(sigma)
            parts.append(block)
        pos, psi_pos = pos + k, psi_pos + s.n_params
    return np.concatenate(parts)


def _structured_coordinates(fit, wanted) -> list[ProfileCoordinate]:
    model = fit.model
    structures, linear = model.structures, model.is_gaussian
    terms = _structured_terms(model)
    cov = [(name, kind, s) for s, _, _, coords in terms for name, kind in coords]
    x_names = list(model.design.x_names)
    if linear:
        ml = fit if fit.method == "ml" else model.fit(method="ml", warn=False)
        problem, d_hat, scale = model.linear_problem, ml.objective, ml.sigma
        z_hat = np.r_[_structured_z_hat(ml, scale), np.log(scale)]
        tail = [("sigma", "log", None)]
    else:
        from ..fit._glmm import glmm_problem

        ml, problem, d_hat, scale = fit, glmm_problem(model), fit.objective, 1.0
        d_name = dispersion_name(model)
        z_hat = np.r_[_structured_z_hat(fit, 1.0), fit.fixef[x_names].to_numpy(),
                      [np.log(fit.dispersion)] if d_name else []]
        tail = [(n, "fixed", None) for n in x_names] + ([(d_name, "log", None)] if d_name else [])
    k = len(cov)
    is_sd = np.array([kind == "log" for _, kind, _ in cov] + [False] * (z_hat.size - k))
    z_start = jnp.asarray(_off_boundary(z_hat, is_sd, np.log(scale)))
    scaled = np.array([kind == "log" for _, kind, _ in cov + tail])
    out = []
    for i, (name, kind, s) in enumerate(cov + tail):
        if name not in wanted:
            continue

        evaluate = _HeldSearch(_structured_held, z_start, i, scaled, problem, structures, linear, k)
        zeta = _zeta_of(evaluate, z_hat[i], d_hat)
        step = float(fit.se[name]) if kind == "fixed" else 0.1
        log_scale = np.log(scale) if i < k else (float(z_hat[i]) if name != "sigma" and kind == "log" else 0.0)
        transform = _rho_transform(s) if kind == "transf" else (None, None)
        out.append(ProfileCoordinate(name, kind, zeta, float(z_hat[i]), step, log_scale=float(log_scale),
                                     transform=transform[0], limits=transform[1]))
    if linear:
        out += _structured_fixed_coordinates(ml, problem, wanted, d_hat)
    return out


def _held_fixed_effect(p: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """For a profile of β_j: `select` (p + 1, p − 1) places the other p − 1 fixed effects, searched freely, in
    the (p + 1)-vector the held fixed-effect objective takes, and `column` (p + 1,) marks β_j's place."""
    select = np.zeros((p + 1, p - 1))
    select[[k for k in range(p) if k != j], np.arange(p - 1)] = 1.0
    column = np.zeros(p + 1)
    column[j] = 1.0
    return select, column


def _structured_fixed_coordinates(ml, problem, wanted, d_hat) -> list[ProfileCoordinate]:
    model = ml.model
    x_names = list(model.design.x_names)
    p, out = len(x_names), []
    psi0 = jnp.asarray(ml.extra["psi"])
    for j, name in enumerate(x_names):
        if name not in wanted:
            continue
        select, column = _held_fixed_effect(p, j)

        def evaluate(v, sel_j=jnp.asarray(select), col_j=jnp.asarray(column)):
            return _structured_fixed_profile(psi0, problem, sel_j, col_j, v, model.structures)

        out.append(ProfileCoordinate(name, "fixed", _zeta_of(evaluate, float(ml.fixef[name]), d_hat),
                                     float(ml.fixef[name]), float(ml.se[name])))
    return out


def _transf_interval(coord: ProfileCoordinate, target: float):
    """A correlation transform's interval: the ends on t's scale, mapped by the transform; a side the deviance
    never rises on is the correlation's own limit."""
    lim = (coord.u_hat - 30.0, coord.u_hat + 30.0)
    lo = _endpoint(coord.zeta, coord.u_hat, 0.1, -target, *lim)
    hi = _endpoint(coord.zeta, coord.u_hat, 0.1, target, *lim)
    lo_v = coord.limits[0] if lo == lim[0] or np.isnan(lo) else float(coord.transform(lo))
    hi_v = coord.limits[1] if hi == lim[1] or np.isnan(hi) else float(coord.transform(hi))
    return lo_v, hi_v


def _power_interval(lo: float, hi: float, power: int):
    """The range of φ^power for φ in [lo, hi] (an ar1() correlation at lag `power`)."""
    ends = (lo**power, hi**power)
    if power % 2 == 0 and lo < 0.0 < hi:
        return 0.0, max(ends)
    return min(ends), max(ends)


def structured_profile_intervals(fit, level: float, names=None) -> pd.DataFrame:
    """confint(method='profile') rows for a model with cs() / ar1() terms (see the section's comment)."""
    target = stats.norm.ppf((1.0 + level) / 2.0)
    model = fit.model
    rows = parameter_names(model) if names is None else list(names)
    sources = _row_sources(model)
    needed = {sources.get(r, (r, 1))[0] for r in rows}
    ends = {}
    for coord in _structured_coordinates(fit, needed):
        if coord.kind == "transf":
            ends[coord.name] = _transf_interval(coord, target)
        else:
            ends[coord.name] = _coordinate_interval(coord, target)
    values = []
    for r in rows:
        source, power = sources.get(r, (r, 1))
        values.append(_power_interval(*ends[source], power) if power > 1 else ends[source])
    return pd.DataFrame(values, index=rows, columns=interval_columns(level))
