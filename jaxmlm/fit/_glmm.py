"""Fitting generalized linear mixed models: Laplace (nAGQ = 1) and adaptive Gauss–Hermite quadrature (nAGQ > 1).

The route follows lme4's glmer:
1. β start: PIRLS over (u, β) together at the θ start (lme4's nAGQ = 0 step, with R's glm starting values).
2. Laplace: BFGS over (θ, β) jointly on the Laplace deviance, with exact gradients (`_pirls`): a host loop
   around one compiled value-and-gradient program (`_optimize.host_bfgs_minimize`). Where PIRLS is Newton's
   method (canonical link, no dispersion), every evaluation of a fit starts PIRLS from the modes at the lowest
   value so far (`Modes`; the search's current point), not from 0: the Xbox-shaped model's evaluations then take
   2-3 PIRLS iterations instead of 6, for the same optimum (docs/bayes_mrp.md).
3. AGQ: from the Laplace optimum, the same on the quadrature deviance (`_agq`).
4. Standard errors from the Hessian H of the same deviance in (θ, β), by central differences of the exact
   gradient: vcov(β) = the β block of 2 H⁻¹ (lme4's use.hessian=TRUE, which differences the deviance itself);
   when H is not positive definite, lme4's fallback from the PIRLS factor, with a warning.
A first fit compiles three programs: the β start, the value and gradient, and the state at the optimum. Compiling
an optimizer loop with PIRLS inside, and autodiff's Hessian through it, took 3-4× as long (cbpp 10.7 s, a
three-term Poisson model 31 s on 2 cores), for a few milliseconds less per fit. The value and gradient also
return PIRLS's modes, so that the state at the optimum is a small program without a PIRLS loop of its own; it
and the β start run once per fit, so "auto" compiles them with the "lean" effort (`_compile.jit(once=True)`).
The log-likelihood for nAGQ = 1 is lme4's (family constants included). For nAGQ > 1 `objective` is lme4's
quadrature deviance, which leaves the family constant c(y) out, while `loglik` adds it back, so that it is a
log-likelihood comparable with the Laplace fit's (AIC/BIC use it).

Families with a dispersion parameter d (negative binomial, Gamma, inverse Gaussian, beta) add log d as the last
coordinate of x = (θ, β, log d), estimated jointly (glmmTMB's way) on the proper Laplace likelihood (`_pirls`);
its standard error comes from the same Hessian. approximation="lme4" is lme4's objective: for NB2 glmer.nb's (Fisher
weights in the Laplace log-determinant), for Gamma and inverse Gaussian glmer's (no dispersion coordinate; σ
plugged in from the deviance, lme4's sigma(fit) reported; docs/families.md).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..core._agq import MAX_NAGQ, agq_deviance, gauss_hermite
from ..core._blocks import cross_products
from ..core._covariance import canonical_theta, theta_diagonal_mask
from .._errors import ConvergenceWarning
from .._warn import user_stacklevel
from ..core._linalg import factorize
from ..optim._optimize import central_difference_hessian, host_bfgs_minimize
from ..core._problem import GlmmObjective
from ..core._laplace_grad import laplace_deviance_fast
from ..core._pirls import (GlmmProblem, flat_modes, laplace_weights, mode_at, pirls,
                           plugin_aic, random_part, split_modes, split_x)
from ..results._results import SINGULAR_TOL, MixedModelResult
from ._boundary import diagnose, leave_boundary_saddle, minimize_with_restarts, scaled_starts, snap_to_boundary, warn_fit
from .._compile import compile_ahead, jit

__all__ = ["fit_glmm", "glmm_problem", "glmer_nb", "APPROXIMATIONS"]

APPROXIMATIONS = ("laplace", "lme4")


def glmm_problem(model, approximation: str = "laplace") -> GlmmProblem:
    """The model's GLMM problem (`Model.glmm_problem`, formed once) for an approximation. approximation="lme4":
    lme4's objective for a dispersion family (NB2: Fisher weights in the log-determinant; Gamma, inverse Gaussian:
    the plug-in σ)."""
    if approximation not in APPROXIMATIONS:
        raise ValueError(f"approximation must be one of {', '.join(APPROXIMATIONS)}; got {approximation!r}")
    problem = model.glmm_problem
    if approximation == "lme4" and getattr(problem.family, "has_dispersion", False):
        name = problem.family.name
        if name not in _LME4_WEIGHTS:
            raise ValueError(f"approximation='lme4' is for the families lme4 fits ({', '.join(_LME4_WEIGHTS)}); "
                             f"lme4 has no {name} family")
        return dataclasses.replace(problem, laplace_weights=_LME4_WEIGHTS[name])
    return problem


_LME4_WEIGHTS = {"nbinom2": "fisher", "Gamma": "plugin", "inverse_gaussian": "plugin"}


# ---------------------------------------------------------------------------------------------- compiled pieces
@jit(once=True)
def _start_beta(theta, problem, phi=None):
    beta, _, pdev, ok, _ = pirls(theta, jnp.zeros(problem.p, dtype=theta.dtype), problem, joint=True, phi=phi)
    return beta, pdev, ok


@jit(once=True)
def _glm_mean(beta, problem):
    return problem.family.linkinv(problem.X @ beta + problem.offset)


def _objective(x, problem, nodes, weights, with_pirls: bool = False, u_start=None):
    """The search's objective: value and gradient exact with one Newton step (`_pirls.mode_at`); the Hessian for
    the standard errors comes from central differences of this gradient. with_pirls: (value, PIRLS's modes).
    u_start: PIRLS's start (`_pirls.modes_and_pirls`)."""
    if nodes is None:  # binomial and Poisson: the gradient by `_laplace_grad`'s rule (others: autodiff)
        return laplace_deviance_fast(x, problem, u_start, newton_steps=1, with_pirls=with_pirls)
    return agq_deviance(x, problem, nodes, weights, newton_steps=1, with_pirls=with_pirls, u_start=u_start)


def _value_and_grad_program(x, problem, nodes, weights, u_start=None):
    (value, pirls_state), grad = jax.value_and_grad(_objective, has_aux=True)(x, problem, nodes, weights, True,
                                                                              u_start)
    return value, grad, pirls_state


_value_and_grad_program.__name__ = _value_and_grad_program.__qualname__ = "_value_and_grad"  # jit's name in logs
_value_and_grad_program = jit(_value_and_grad_program)


def _value_and_grad(x, problem, nodes, weights, u_start=None):
    """(value, gradient, PIRLS's (u*, converged, iterations) at x): the modes for `_state_from` at the optimum.
    u_start: the flat modes PIRLS starts from (None: 0, passed as an array, so that every caller, a fit's search
    or its Hessian or a later caller's, runs the one compiled program)."""
    if u_start is None:
        u_start = np.zeros(_n_modes(problem.structure))
    return _value_and_grad_program(x, problem, nodes, weights, u_start)


_value_and_grad.variants = _value_and_grad_program.variants  # the compiled program's, for `compile_ahead`
_value_and_grad.variant_for = _value_and_grad_program.variant_for
_value_and_grad.stored = _value_and_grad_program.stored


class Modes:
    """Where a fit's evaluations start PIRLS: the modes u* at the lowest value evaluated so far whose PIRLS
    converged (0 before the first), the search's current point. Its trials are near it, so PIRLS from there needs
    a few iterations fewer to the same mode (to its tolerance; from a trial that overshot, the modes can be far off
    for the next); each evaluation stays a pure function of (x, start).

    Only where PIRLS is Newton's method (a canonical link, no dispersion parameter: binomial logit, Poisson log),
    which converges quadratically, so that its stop leaves modes as accurate from any start; Fisher scoring
    (other links, dispersion families) converges linearly, and from a near start it stops after a step as small
    as its tolerance with the modes off by more: the gradients at x ± δ then differ by more than the Hessian's
    differences resolve (an inverse Gaussian fit's standard error moved by 1%). There every evaluation starts
    from 0, as the standard errors' central differences need."""

    def __init__(self, problem):
        self.u = np.zeros(_n_modes(problem.structure))
        self.best = np.inf
        family = problem.family
        self.enabled = bool(getattr(family, "canonical", False)) and not getattr(family, "has_dispersion", False)

    def keep(self, value, pirls_state):
        value = float(value)
        if self.enabled and value <= self.best and bool(pirls_state[1]):
            self.u, self.best = pirls_state[0], value


def _start_of(modes: Modes | None):
    """PIRLS's start for `_value_and_grad`: modes.u, or None (0) without `Modes`."""
    return None if modes is None else modes.u


def _evaluate(x, problem, nodes, weights, modes: Modes | None = None):
    """`_value_and_grad` at x with PIRLS from modes.u, which this evaluation's modes then replace (`Modes.keep`);
    modes None: PIRLS from 0."""
    out = _value_and_grad(x, problem, nodes, weights, _start_of(modes))
    if modes is not None:
        modes.keep(out[0], out[2])
    return out


def _minimize(x0, problem, nodes, weights, max_iter, modes: Modes | None = None):
    """BFGS on (θ, β) around the compiled value and gradient (NumPy arguments: for a small model jnp.asarray's
    dispatch would cost as much as an evaluation)."""
    return host_bfgs_minimize(lambda x: _evaluate(np.asarray(x), problem, nodes, weights, modes)[:2],
                              np.asarray(x0, dtype=np.float64), max_iter=max_iter, gtol=1e-8)


_DELTA = 1e-5  # `central_difference_hessian`'s step


def _gradients(points, problem, nodes, weights, modes: Modes | None = None) -> np.ndarray:
    """The gradients at the rows of points, every call dispatched before any result is read (the host does not
    wait between the programs), PIRLS started from the same modes (modes.u, left as it is) at every point."""
    start = _start_of(modes)
    pending = [_value_and_grad(pt, problem, nodes, weights, start)[1] for pt in points]
    return np.stack([np.asarray(g) for g in pending])


def _derivatives_at(x, problem, nodes, weights, known=None, plus=None, modes: Modes | None = None):
    """The objective, its exact gradient and the Hessian in (θ, β) by central differences of that gradient (2k
    calls of the optimizer's own program) at x. known: (value, gradient) at x already evaluated (the search's last
    accepted point); plus: the gradients at x + δeⱼ already evaluated (`_newton_polish`'s); neither evaluated
    again."""
    x = np.asarray(x, dtype=np.float64)
    value, grad = known if known is not None else _evaluate(x, problem, nodes, weights, modes)[:2]

    def gradients_at(points):
        if plus is None:
            return _gradients(points, problem, nodes, weights, modes)
        return np.vstack([plus, _gradients(points[x.size:], problem, nodes, weights, modes)])

    return dict(value=value, grad=grad, hess=central_difference_hessian(gradients_at, x, _DELTA))


def _known_at(x, res):
    """The search's value and gradient where x is its last point unchanged (not snapped, not sign-flipped)."""
    if res is None or not np.array_equal(np.asarray(res.x, dtype=np.float64), x):
        return None
    return np.asarray(res.value, dtype=np.float64), np.asarray(res.grad, dtype=np.float64)


def _state_parts(x, u, problem):
    """The modes per term, Fisher weights and lme4's RX fallback vcov at x, from PIRLS's flat modes u there."""
    theta, beta, phi = split_x(x, problem)
    u = split_modes(u, problem.structure)
    eta = problem.X @ beta + problem.offset + random_part(problem.structure, problem.rows, theta, u)
    w = laplace_weights(problem, eta, phi)
    # X alone: any further column in the span of [Z X] (a column of ones duplicates the intercept) makes the
    # tail singular, and whether its Cholesky then succeeds depends on the machine's rounding
    factor = factorize(theta, cross_products(problem.structure, problem.rows, w, problem.X), problem.structure)
    inv = factor.fixed_inverse(problem.structure.m_z, problem.p)
    return dict(u=u, w=w, vcov_rx=inv.T @ inv, factors=factor.factors)


@jit(once=True)
def _state_from(x, u, problem):
    """`_state_parts` (the modes u from `_value_and_grad`'s PIRLS at x): no PIRLS loop in this program."""
    return _state_parts(x, u, problem)


@jit(once=True)
def _state_at(x, problem):
    """The modes, Fisher weights, PIRLS status and lme4's RX fallback vcov at x, in one compiled program."""
    theta, beta, phi = split_x(x, problem)
    # the modes' PIRLS run gives the iteration count too (a second run would double the program)
    u, ok, iters = mode_at(theta, beta, problem, phi, newton_steps=0)
    return dict(_state_parts(x, flat_modes(u), problem), ok=ok, iters=iters)


def _n_modes(structure) -> int:
    """The length of the flat modes (`_pirls.flat_modes`)."""
    return sum(l * q for l, q in zip(structure.n_levels, structure.qs))


def _final_state(x, problem, nodes, weights, modes: Modes | None = None):
    """The state at the final x from one more evaluation of the search's own program (its PIRLS modes) and the
    small `_state_from`: no second PIRLS program to compile."""
    _, _, (u, ok, iters) = _evaluate(x, problem, nodes, weights, modes)
    return dict(_state_from(x, u, problem), ok=ok, iters=iters)


# ---------------------------------------------------------------------------------------------- the driver
def _check_method(model, method: str, nagq):
    if method == "laplace":
        if nagq not in (None, 1):
            raise ValueError(f"method='laplace' is nAGQ = 1; got nagq={nagq} (use method='agq' for more nodes)")
        return "laplace", 1
    if nagq is None:
        raise ValueError(f"method='agq' needs the number of quadrature nodes: nagq between 2 and {MAX_NAGQ}")
    if not isinstance(nagq, (int, np.integer)) or isinstance(nagq, bool) or nagq < 1:
        raise ValueError(f"nagq must be a positive integer, got {nagq!r}")
    if nagq == 1:
        return "laplace", 1
    if nagq > MAX_NAGQ:
        raise ValueError(f"nagq must be at most {MAX_NAGQ} (lme4's limit for adaptive Gauss-Hermite quadrature)")
    terms = model.design.terms
    if len(terms) != 1 or terms[0].q != 1:
        raise ValueError(
            "nAGQ > 1 is only available for models with a single, scalar random-effects term "
            f"(this model has {', '.join(t.term.text for t in terms)}); use nagq=1 (Laplace)"
        )
    return "agq", int(nagq)


def _dispersion_start(model, problem, start):
    """A dispersion family's d to start from: the family's fixed value, the user's start["dispersion"], or the
    family's moment estimate from a GLM fitted at d = 1. None for binomial and Poisson."""
    fam = problem.family
    if not getattr(fam, "has_dispersion", False):
        return None
    if problem.laplace_weights == "plugin":  # lme4's Gamma / inverse Gaussian: the modes at d = 1
        return 1.0
    if fam.dispersion is not None:
        return fam.dispersion
    if isinstance(start, dict) and start.get("dispersion") is not None:
        d = float(start["dispersion"])
        if not np.isfinite(d) or d <= 0:
            raise ValueError(f"start['dispersion'] must be a positive number, got {start['dispersion']!r}")
        return d
    beta, _, _ = _start_beta(np.zeros(model.n_theta), problem, np.float64(1.0))
    beta = np.where(np.isfinite(np.asarray(beta)), np.asarray(beta), 0.0)
    mu = np.asarray(_glm_mean(jnp.asarray(beta), problem))
    d = model.design
    return fam.dispersion_start(d.y, mu, d.weights, problem.p)


def _start(model, problem, start) -> np.ndarray:
    nt, p = model.n_theta, problem.p
    nd = problem.n_dispersion
    theta0, beta0 = model.theta_start(), None
    phi0 = _dispersion_start(model, problem, start)
    # NumPy arguments: `jnp.asarray` would compile a copy program of its own (a first fit's time)
    phi = None if phi0 is None else np.float64(phi0)
    if start is not None:
        if isinstance(start, dict):
            theta0 = np.asarray(start.get("theta", theta0), dtype=np.float64)
            b = start.get("beta", start.get("fixef"))
            beta0 = None if b is None else np.asarray(b, dtype=np.float64)
        else:
            s = np.asarray(start, dtype=np.float64).ravel()
            if s.size not in (nt, nt + p, nt + p + nd):
                raise ValueError(f"start must hold θ ({nt} values) or (θ, β) ({nt + p} values)"
                                 + (f" or (θ, β, log {problem.family.dispersion_name}) ({nt + p + 1} values)"
                                    if nd else "") + f"; got {s.size}")
            theta0, beta0 = s[:nt], (s[nt:nt + p] if s.size >= nt + p else None)
            if nd and s.size == nt + p + nd:
                phi0 = float(np.exp(s[-1]))
        if theta0.shape != (nt,) or (beta0 is not None and beta0.shape != (p,)):
            raise ValueError(f"start needs θ of length {nt} and β of length {p}")
    if beta0 is None:
        beta, _, ok = _start_beta(np.asarray(theta0, dtype=np.float64), problem, phi)
        beta0 = np.asarray(beta)
        if not bool(ok) or not np.all(np.isfinite(beta0)):
            beta, _, _ = _start_beta(np.zeros(nt), problem, phi)  # plain GLM
            beta0 = np.where(np.isfinite(np.asarray(beta)), np.asarray(beta), 0.0)
    tail = [np.log([phi0])] if nd else []
    return np.concatenate([theta0, beta0] + tail)


def _x_lower(model, size: int) -> np.ndarray:
    """lme4's lower bounds on x = (θ, β[, log d]): 0 on the diagonal of each T_k, -inf elsewhere."""
    return np.concatenate([model.theta_lower(), np.full(size - model.n_theta, -np.inf)])


def _run(x0, problem, nodes, weights, max_iter, modes: Modes | None = None):
    """BFGS from x0, restarted from scaled θ starts after a non-finite evaluation (`_boundary`)."""
    error = FloatingPointError(
        "the GLMM deviance is not finite at any start; check the response, offset and the predictors' scale")
    return minimize_with_restarts(lambda x: _minimize(x, problem, nodes, weights, max_iter, modes), x0,
                                  scaled_starts(x0, problem.structure.n_theta), error)


def _search(problem, x0, method: str, nagq: int, max_iter: int, modes: Modes | None = None):
    """Laplace from x0; for nAGQ > 1 the quadrature deviance from the Laplace optimum."""
    res, messages = _run(x0, problem, None, None, max_iter, modes)
    nodes = weights = None
    if method == "agq":
        z, w = gauss_hermite(nagq)
        nodes, weights = jnp.asarray(z), jnp.asarray(w)
        res, more = _run(np.asarray(res.x), problem, nodes, weights, max_iter, modes)
        messages += more
    return res, messages, nodes, weights


def _to_boundary(model, problem, res, nodes, weights, max_iter: int, messages: list, modes: Modes | None = None):
    """The optimum in canonical sign, tiny variances snapped to 0 (β fixed), off a saddle on the boundary."""
    nt = model.n_theta
    lower = _x_lower(model, np.asarray(res.x).size)

    def objective(x):
        return float(_evaluate(np.asarray(x, dtype=np.float64), problem, nodes, weights, modes)[0])

    def finish(x):
        x = np.asarray(x, dtype=np.float64).copy()
        x[:nt] = canonical_theta(x[:nt], model.qs)
        return snap_to_boundary(x, lower, objective)

    def refit(start):
        res2, _ = _run(start, problem, nodes, weights, max_iter, modes)
        return finish(res2.x), res2

    return leave_boundary_saddle(finish(res.x), res, lower, objective, refit, messages)


def _newton_polish(x, problem, nodes, weights, known=None, steps: int = 3, modes: Modes | None = None):
    """Finish with Newton steps on (θ, β); returns x and `_derivatives_at`'s there (the caller takes the state
    once, at the final x). BFGS stops once the gradient is small relative to the deviance; along flat directions
    (a predictor and its square, say) that can leave fixed effects off in the fourth digit. The steps use the
    Hessian at the start by forward differences, from the half of the central differences' gradients (x + δeⱼ)
    the standard errors need anyway (each step costs one gradient, where a Hessian costs 2k); each is kept only if
    it lowers the deviance. If the steps moved a coordinate by more than 1e-4 (1 + |x|) the Hessian is taken again
    at the end; otherwise the other half (x − δeⱼ) completes the central one at the start (after BFGS the steps
    are usually ~1e-6: the Hessian there differs by as little). Boundary fits (a θ near 0) are left as they are.
    known: (value, gradient) at x, if already evaluated. modes: PIRLS's start (`Modes`)."""
    nt = problem.structure.n_theta
    if np.any(np.abs(x[:nt]) < SINGULAR_TOL):
        return x, _derivatives_at(x, problem, nodes, weights, known=known, modes=modes)
    x_start = x = np.asarray(x, dtype=np.float64)
    value, grad = known if known is not None else _evaluate(x, problem, nodes, weights, modes)[:2]
    value, grad = float(value), np.asarray(grad, dtype=np.float64)
    at_start = None if modes is None else modes.u  # the modes at x_start, for the other half of its Hessian
    plus = _gradients(x + _DELTA * np.eye(x.size), problem, nodes, weights, modes)
    start = dict(known=(value, grad), plus=plus)
    hess = (plus - grad) / _DELTA
    hess = 0.5 * (hess + hess.T)
    try:
        np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return x, _derivatives_at(x, problem, nodes, weights, **start, modes=modes)
    for _ in range(steps):
        step = np.linalg.solve(hess, grad)
        if not np.all(np.isfinite(step)) or np.max(np.abs(step)) < 1e-12:
            break
        v_new, g_new, _ = _evaluate(x - step, problem, nodes, weights, modes)
        if not float(v_new) <= value + 1e-12 * abs(value):
            break
        x, value, grad = x - step, float(v_new), np.asarray(g_new)
    if np.any(np.abs(x - x_start) > 1e-4 * (1.0 + np.abs(x_start))):
        return x, _derivatives_at(x, problem, nodes, weights, known=(value, grad), modes=modes)
    if modes is not None:
        modes.u = at_start
    central = _derivatives_at(x_start, problem, nodes, weights, **start, modes=modes)
    return x, dict(central, value=value, grad=grad)


def _vcov(hess, nt, vcov_rx, messages) -> np.ndarray:
    """β block of 2 H⁻¹ (lme4's use.hessian), with log d's row and column for a dispersion family; lme4's RX
    fallback when H is not positive definite (log d's entries then NaN)."""
    H = 0.5 * (hess + hess.T)
    try:
        if not np.all(np.isfinite(H)):
            raise np.linalg.LinAlgError
        np.linalg.cholesky(H)
        V = 2.0 * np.linalg.inv(H)[nt:, nt:]
        if np.all(np.isfinite(V)) and np.all(np.diag(V) > 0):
            return V
    except np.linalg.LinAlgError:
        pass
    messages.append(
        "variance-covariance matrix computed from the Hessian is not positive definite or contains NA values: "
        "falling back to var-cov estimated from RX"
    )
    extra = hess.shape[0] - nt - vcov_rx.shape[0]
    if extra:
        return np.pad(vcov_rx, (0, extra), constant_values=np.nan)
    return vcov_rx


def _dispersion_results(model, problem, x, vcov_full):
    """β's vcov and, for a dispersion family, extra entries: d, its standard error (delta method from log d's
    variance in the joint Hessian) and the family with d filled in (for residuals, variance, simulate)."""
    nt, p = model.n_theta, problem.p
    fam = problem.family
    if not getattr(fam, "has_dispersion", False):
        return vcov_full, {}
    if problem.laplace_weights == "plugin":
        return vcov_full[:p, :p], _plugin_sigma(problem, x)
    _, _, phi = split_x(jnp.asarray(x), problem)
    d = float(phi)
    extra = {"dispersion": d, "family": fam.with_dispersion(d), "n_dispersion": problem.n_dispersion,
             "approximation": "lme4" if problem.laplace_weights == "fisher" else "laplace"}
    if problem.n_dispersion:
        var_log = float(vcov_full[p, p])
        extra["dispersion_se"] = d * np.sqrt(var_log) if var_log >= 0 else np.nan
    else:
        extra["dispersion_se"] = np.nan  # fixed, not estimated
    return vcov_full[:p, :p], extra


def fit_glmm(model, *, method: str, nagq=None, start=None, max_iter: int = 1000, warn: bool = True,
             approximation: str = "laplace"):
    """Fit model by Laplace or AGQ; returns a `MixedModelResult`. approximation="lme4": see the module docstring."""
    method, nagq = _check_method(model, method, nagq)
    problem = glmm_problem(model, approximation)
    if method == "agq" and problem.laplace_weights == "plugin":
        raise ValueError("approximation='lme4' for the Gamma and inverse Gaussian families is Laplace only (nagq=1)")
    # the search's program (then the state's) compiles in a worker thread while the start's compiles and runs here
    shape = np.zeros(model.n_theta + problem.p + problem.n_dispersion)
    ahead = compile_ahead(_value_and_grad, shape, problem, None, None, np.zeros(_n_modes(problem.structure)))
    state_ahead = compile_ahead(_state_from, shape, np.zeros(_n_modes(problem.structure)), problem)
    x0 = _start(model, problem, start)  # a bad start raises here, without waiting for the compile
    ahead.exception()  # waits; an error there is the search's own to raise
    modes = Modes(problem)
    res, messages, nodes, weights = _search(problem, x0, method, nagq, max_iter, modes)
    x, res = _to_boundary(model, problem, res, nodes, weights, max_iter, messages, modes)
    x, derivs = _newton_polish(x, problem, nodes, weights, known=_known_at(x, res), modes=modes)
    canonical = canonical_theta(x[:model.n_theta], model.qs)
    if not np.array_equal(canonical, x[:model.n_theta]):  # a Newton step may have flipped a column's sign
        x[:model.n_theta] = canonical
        modes = Modes(problem)  # the modes of a column of the other sign are the other sign's
        derivs = _derivatives_at(x, problem, nodes, weights, modes=modes)
    state_ahead.exception()
    state = dict(**derivs, **_final_state(x, problem, nodes, weights, modes))
    if not bool(state["ok"]):
        messages.append(f"PIRLS did not converge at the optimum (after {int(state['iters'])} iterations)")
    fit = _result(model, problem, x, state, res, messages, x0=x0, method=method, nagq=nagq, max_iter=max_iter)
    if warn:
        _warn_separation(fit)
        warn_fit(fit)
    return fit


def _result(model, problem, x, state, res, messages, *, x0, method, nagq, max_iter) -> MixedModelResult:
    """The fit at x from the state there: vcov from the Hessian, the OptSummary, the log-likelihood."""
    nt = model.n_theta
    objective = float(state["value"])
    grad, hess = np.asarray(state["grad"]), np.asarray(state["hess"])
    vcov_messages: list[str] = []
    vcov, dispersion = _dispersion_results(model, problem, x,
                                           _vcov(hess, nt, np.asarray(state["vcov_rx"]), vcov_messages))
    # evaluations and iterations are the last stage's (for nAGQ > 1 the quadrature search from the Laplace
    # optimum); `initial` is the Laplace search's start
    optsum = diagnose("BFGS", method, x, grad, hess, res, messages + vcov_messages, lower=_x_lower(model, x.size),
                      initial=x0, fmin=objective, max_iter=max_iter, nagq=nagq, gtol=1e-8)
    factors = [np.asarray(T) for T in state["factors"]]
    loglik = -objective / 2.0 if method == "laplace" else -(objective + float(problem.constant)) / 2.0
    if model.design.extra.get("non_integer"):  # Poisson counts that are not integers: R's logLik (see the warning)
        loglik = -np.inf
    return MixedModelResult(
        model, method=method, theta=x[:nt], beta=x[nt:nt + problem.p], vcov=vcov,
        sigma=dispersion.pop("sigma", None), b=[np.asarray(u) @ T.T for u, T in zip(state["u"], factors)],
        objective=objective, loglik=loglik, optinfo=optsum.info(), optsum=optsum,
        # vcov_rx: (R_Xᵀ R_X)⁻¹ from the PIRLS factor at the optimum (lme4's RX), for anova()'s F table
        extra={"nagq": nagq, "working_weights": np.asarray(state["w"]), "vcov_rx": np.asarray(state["vcov_rx"]),
               **dispersion},
    )


def glmm_objective(model, method: str, nagq: int = 1) -> GlmmObjective:
    """The public objective (core/_problem.py) of the fit by `method`: x = (θ, β[, log dispersion]) from lme4's
    start (θ = identity, β from PIRLS at that θ), lower bounds 0 on the diagonal of each T_k."""
    method, nagq = _check_method(model, method, nagq)
    problem = glmm_problem(model)
    x0 = _start(model, problem, None)
    nt, p, d = model.n_theta, problem.p, model.design
    lower = np.concatenate([np.where(theta_diagonal_mask(model.qs), 0.0, -np.inf), np.full(x0.size - nt, -np.inf)])
    names = list(model.theta_names) + list(d.x_names) + ["log_dispersion"] * (x0.size - nt - p)
    nodes = node_weights = None
    if method == "agq":
        z, w = gauss_hermite(nagq)
        nodes, node_weights = jnp.asarray(z), jnp.asarray(w)
    family, extra = model.family, d.extra
    return GlmmObjective(data=problem, x0=jnp.asarray(x0), lower=jnp.asarray(lower), nodes=nodes,
                         node_weights=node_weights, method=method, names=tuple(names),
                         log_constant=lambda y, weights: family.log_constant(y, weights, extra))


def _warn_separation(fit) -> None:
    """glm's warning for (quasi-)complete separation: fitted probabilities at 0 or 1."""
    if fit.family.name != "binomial":
        return
    mu = np.asarray(fit.fitted())
    if np.any((mu < 1e-8) | (mu > 1 - 1e-8)):
        warnings.warn(
            "fitted probabilities numerically 0 or 1 occurred: the fixed effects may be (quasi-)completely "
            "separated, so their estimates and standard errors are unreliable",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )


@jit(once=True)
def _plugin_state(x, problem):
    theta, beta, phi = split_x(x, problem)
    u, _, _ = mode_at(theta, beta, problem, phi, newton_steps=0)
    _, mu = plugin_aic(problem, theta, beta, u)
    pearson = jnp.sum(problem.weights * (problem.y - mu) ** 2 / problem.family.variance(mu))
    return pearson + sum(jnp.sum(v**2) for v in u)


def _plugin_sigma(problem, x):
    """lme4's sigma(fit) for a Gamma / inverse Gaussian glmer: √((Pearson χ² + ‖u‖²)/n), its residual scale (lme4
    reports the random effects' standard deviations as θσ and counts σ in AIC)."""
    n = int(np.sum(np.asarray(problem.weights) > 0))
    sigma = float(np.sqrt(float(_plugin_state(jnp.asarray(x), problem)) / n))
    fam = problem.family
    return {"dispersion": sigma, "dispersion_se": np.nan, "family": fam.with_dispersion(sigma), "sigma": sigma,
            "approximation": "lme4"}


def glmer_nb(formula: str, data, *, link: str = "log", nagq: int = 1, approximation: str = "laplace", **kwargs):
    """Negative binomial (NB2) GLMM as lme4's glmer.nb: θ estimated, `fit.dispersion` is θ
    (getME(fit, "glmer.nb.theta")). The default objective is the proper Laplace likelihood (glmmTMB's nbinom2);
    approximation="lme4" gives glmer.nb's own (Fisher weights in the log-determinant; docs/families.md)."""
    from ._model import glmer

    return glmer(formula, data, family="nbinom2", link=link, nagq=nagq, approximation=approximation, **kwargs)
