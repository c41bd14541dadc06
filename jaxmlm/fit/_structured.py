"""Fitting a linear mixed model with cs() / ar1() covariance structures: the optimizer works on ψ.

The objective is lme4's profiled deviance (or REML criterion) at θ(ψ) (`core/_structures.py`), so the statistics,
the blocked factor and the estimates given θ are those of every other fit; only the search space changes. The
fit stores θ (lme4's layout, the full factor) and ψ (`fit.extra["psi"]`), counts ψ in AIC/BIC, and checks
convergence with the gradient and Hessian in ψ.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from ..core._covariance import canonical_theta
from ..core._lmm import linear_estimates, profiled_deviance
from ..core._structures import n_psi, psi_lower, psi_names, psi_start, psi_to_theta, structure_parameters
from ..optim._optimize import central_difference_hessian, host_bfgs_minimize
from ._boundary import diagnose, leave_boundary_saddle, minimize_with_restarts, scaled_starts, snap_to_boundary, warn_fit
from ..results._results import MixedModelResult
from .._compile import jit

__all__ = ["fit_linear_structured", "structured_deviance"]


def structured_deviance(psi, problem, reml: bool, structures):
    """The profiled deviance (ML) or REML criterion at θ(ψ); pure JAX."""
    return profiled_deviance(psi_to_theta(psi, structures), problem, reml)


@jit(static_argnames=("reml", "structures"))
def _value_and_grad(psi, problem, reml: bool, structures):
    return jax.value_and_grad(structured_deviance)(psi, problem, reml, structures)


def _psi_start(model, structures, start) -> np.ndarray:
    psi0 = psi_start(structures) if start is None else np.asarray(start, dtype=np.float64)
    if psi0.shape != (n_psi(structures),):
        raise ValueError(f"start must have {n_psi(structures)} values (the covariance parameters ψ: "
                         f"{', '.join(model.psi_names)}), got shape {psi0.shape}")
    return psi0


def _host(value_and_grad_fn, *args):
    """x → (value, gradient) as NumPy, by the compiled program."""
    def value_and_grad(x):
        value, grad = value_and_grad_fn(np.asarray(x, dtype=np.float64), *args)
        return np.asarray(value), np.asarray(grad)

    return value_and_grad


def _search(value_and_grad, x0, lower, n_psi_: int, max_iter: int, gtol: float, what: str):
    """BFGS from x0 with the shared restarts, snap to the boundary and saddle escape (`_boundary`) in ψ's
    coordinates. Returns (x, result, messages)."""
    def minimize(start):
        return host_bfgs_minimize(value_and_grad, start, max_iter=max_iter, gtol=gtol)

    def refit(start):
        res2, _ = minimize_with_restarts(minimize, start, scaled_starts(start, n_psi_), _not_finite(what))
        return snap_to_boundary(np.asarray(res2.x, dtype=np.float64), lower, objective), res2

    def objective(x):
        return float(value_and_grad(x)[0])

    res, messages = minimize_with_restarts(minimize, x0, scaled_starts(x0, n_psi_), _not_finite(what))
    x = snap_to_boundary(np.asarray(res.x, dtype=np.float64), lower, objective)
    x, res = leave_boundary_saddle(x, res, lower, objective, refit, messages)
    return x, res, messages


def _not_finite(what: str):
    return FloatingPointError(f"the {what} is not finite at any start; rescale the response or the predictors")


def _hessian(value_and_grad, x):
    return central_difference_hessian(lambda points: np.stack([value_and_grad(p)[1] for p in points]), x)


def fit_linear_structured(model, reml: bool, *, start=None, max_iter: int = 1000, warn: bool = True
                          ) -> MixedModelResult:
    structures = model.structures
    problem = model._for_evaluation()
    value_and_grad = _host(_value_and_grad, problem, reml, structures)
    psi0 = _psi_start(model, structures, start)
    lower = psi_lower(structures)
    psi, res, messages = _search(value_and_grad, psi0, lower, psi0.size, max_iter, 1e-9, "deviance")
    theta = canonical_theta(np.asarray(psi_to_theta(jnp.asarray(psi), structures)), model.qs)
    est = linear_estimates(jnp.asarray(theta), problem, reml)
    objective = float(est["objective"])
    method = "reml" if reml else "ml"
    optsum = diagnose("BFGS", method, psi, value_and_grad(psi)[1], _hessian(value_and_grad, psi), res, messages,
                      lower=lower, initial=psi0, fmin=objective, max_iter=max_iter)
    d = model.design
    columns = [t.column_names for t in d.terms]
    sigma = float(est["sigma"])
    fit = MixedModelResult(
        model, method=method, theta=theta, beta=np.asarray(est["beta"]), vcov=np.asarray(est["vcov"]), sigma=sigma,
        b=[np.asarray(x) for x in est["b"]], objective=objective, loglik=-objective / 2.0, optinfo=optsum.info(),
        optsum=optsum,
        extra={"psi": psi, "psi_names": psi_names(structures, d.group_names, columns),
               "n_covariance": n_psi(structures),
               "structures": structure_parameters(structures, psi, d.group_names, columns, sigma)},
    )
    if warn:
        warn_fit(fit)
    return fit


# ---------------------------------------------------------------------------------------------- GLMMs (Laplace)
def _glmm_x(x_psi, n_params: int, structures):
    """(ψ, β[, log dispersion]) → the GLMM driver's x = (θ(ψ), β[, log dispersion])."""
    return jnp.concatenate([psi_to_theta(x_psi[:n_params], structures), x_psi[n_params:]])


@jit(static_argnames=("structures",))
def _glmm_value_and_grad(x_psi, problem, structures):
    from ..core._pirls import laplace_deviance

    return jax.value_and_grad(lambda x: laplace_deviance(_glmm_x(x, n_psi(structures), structures), problem))(x_psi)


def fit_glmm_structured(model, *, method: str, nagq=None, start=None, max_iter: int = 1000, warn: bool = True,
                        approximation: str = "laplace") -> MixedModelResult:
    """Laplace fit of a GLMM with cs() / ar1() terms: BFGS on (ψ, β[, log dispersion]); β's covariance from the
    Hessian in those coordinates (lme4's use.hessian, glmmTMB's sdreport)."""
    from ._glmm import _check_method, _dispersion_results, _start, _state_at, _vcov, glmm_problem

    method, nagq = _check_method(model, method, nagq)
    if method != "laplace":
        raise ValueError("models with cs() or ar1() terms are fitted by Laplace (method='laplace', nagq=1)")
    if start is not None:
        raise ValueError("start= is not offered yet for generalized models with cs() or ar1() terms")
    problem = glmm_problem(model, approximation)
    structures = model.structures
    k = n_psi(structures)
    x0_theta = _start(model, problem, None)  # θ at lme4's identity start = θ(ψ start): β's start is the same
    x0 = np.concatenate([psi_start(structures), x0_theta[model.n_theta:]])
    value_and_grad = _host(_glmm_value_and_grad, problem, structures)
    lower = np.concatenate([psi_lower(structures), np.full(x0.size - k, -np.inf)])
    x, res, messages = _search(value_and_grad, x0, lower, k, max_iter, 1e-8, "GLMM deviance")
    objective, grad = value_and_grad(x)
    hess = _hessian(value_and_grad, x)
    x_theta = np.array(_glmm_x(jnp.asarray(x), k, structures))
    x_theta[:model.n_theta] = canonical_theta(x_theta[:model.n_theta], model.qs)
    state = _state_at(jnp.asarray(x_theta), problem)
    if not bool(state["ok"]):
        messages.append("PIRLS did not converge at the optimum")
    vcov, dispersion = _dispersion_results(model, problem, x_theta,
                                           _vcov(hess, k, np.asarray(state["vcov_rx"]), messages))
    optsum = diagnose("BFGS", method, x, grad, hess, res, messages, lower=lower, initial=x0, fmin=float(objective),
                      max_iter=max_iter, gtol=1e-8)
    return _glmm_result(model, problem, x, x_theta, state, optsum, vcov, dispersion, float(objective), warn)


def _glmm_result(model, problem, x, x_theta, state, optsum, vcov, dispersion, objective: float, warn: bool):
    structures = model.structures
    k = n_psi(structures)
    factors = [np.asarray(T) for T in state["factors"]]
    d = model.design
    columns = [t.column_names for t in d.terms]
    fit = MixedModelResult(
        model,
        method="laplace",
        theta=x_theta[:model.n_theta],
        beta=x_theta[model.n_theta:model.n_theta + problem.p],
        vcov=vcov,
        sigma=dispersion.pop("sigma", None),
        b=[np.asarray(u) @ T.T for u, T in zip(state["u"], factors)],
        objective=objective,
        loglik=-objective / 2.0,
        optinfo=optsum.info(),
        optsum=optsum,
        extra={"nagq": 1, "working_weights": np.asarray(state["w"]), "vcov_rx": np.asarray(state["vcov_rx"]),
               "psi": x[:k], "psi_names": psi_names(structures, d.group_names, columns), "n_covariance": k,
               "structures": structure_parameters(structures, x[:k], d.group_names, columns, 1.0), **dispersion},
    )
    if warn:
        warn_fit(fit)
    return fit
