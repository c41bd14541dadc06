"""The Model driver: structure built once from formula and data, then fitted (and refitted) many ways.

`Model` parses, builds the design and the block structure (NumPy, outside jit) and keeps them; `fit` runs the
compiled objective and optimizer and returns a `MixedModelResult`. `lmer` and `glmer` are lme4's entry points.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

import jax

from .._config import caller_precision, fit_allocations, float64, float64_methods, require_float64
from ..core._blocks import build_structure, row_data
from ..optim._summary import OptSummary, summarize
from ..core._covariance import canonical_theta, theta_diagonal_mask, theta_names, theta_start, theta_to_matrices
from ..core._structures import is_structured, psi_names, require_unstructured, structures_for
from ..formula._design import build_design, check_linear_model, to_pandas
from .._errors import ConvergenceWarning, DataError, FormulaError, NewLevelError, SingularFitWarning
from .._warn import SINGULAR_NOTE, user_stacklevel
from ..formula._family import get_family
from ..core._lmm import (deviance_and_gradient, deviance_value, gradients_at_points, linear_diagnostics, linear_estimates,
                   make_linear_problem, profiled_deviance, split_problem)
from ..core._problem import LinearObjective, LinearRows
from ..optim._optimize import central_difference_hessian, cobyqa_minimize, host_bfgs_minimize
from ..results._results import SINGULAR_TOL, MixedModelResult, OptimizerInfo
from ..formula._terms import parse_formula

__all__ = ["Model", "lmer", "glmer"]

_METHODS = ("reml", "ml", "laplace", "agq")
_HESSIAN_MAX_PARAMS = 60  # exact Hessian diagnostics for models up to this many θ
# The convergence checks need the gradient and Hessian at θ. Up to this many θ the Hessian comes from central
# differences of the exact (autodiff) gradient at θ ± δe_j: 2k calls of the optimizer's own value-and-gradient
# program, so nothing more compiles (jax.hessian's program compiles slowly). Dividing gradient differences by
# δ = 1e-5 keeps ~1e-8 relative accuracy (lme4 differences the deviance itself, dividing by δ²); forward
# differences would be ~1e-5 accurate, too coarse for a zero eigenvalue to show an unidentifiable model. Beyond
# 10 θ the exact Hessian is cheaper than 2k gradients. (Measurements behind these thresholds: docs/scale.md.)
_STENCIL_MAX_PARAMS = 10
# ... computed by separate calls of that program for statistics of up to this many numbers; past it a call of its
# own costs enough more than a gradient inside a program that the 2k gradients run in one compiled call (one more
# program to compile).
_STENCIL_MAX_SIZE = 1_000_000
# Dense tails at least this large are fitted without derivatives (COBYQA, as lme4 fits with BOBYQA) and checked
# with lme4's finite-difference derivatives. There an evaluation costs O(m³) and its gradient ~4x more (the
# inverse S⁻¹ and the backward pass through the entry pairs), so a derivative-free search with more evaluations
# and lme4's difference stencil cost less than gradient-based BFGS and 2k gradients. Smaller models keep
# gradient-based BFGS (`_minimize`), where an evaluation with its gradient is cheap.
_DERIVATIVE_FREE_TAIL = 512


_BARE_DOT = re.compile(r"(?<![\w.])\.(?![\w.])")  # a '.' that is not part of a name or a number


@float64_methods
class Model:
    """A mixed model's structure: formula + data → design, block kinds and statistics, built once.

    >>> model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    >>> fit = model.fit(method="reml")
    """

    def __init__(
        self,
        formula: str,
        data: Any,
        family: Any = "gaussian",
        weights: Any = None,
        offset: Any = None,
        *,
        link: str | None = None,
        na_action: str = "omit",
        data_name: str | None = None,
    ):
        self.formula = formula
        # what `update` needs to build a model of another formula on the same data (a reference, not a copy)
        self._source = dict(data=data, family=family, weights=weights, offset=offset, link=link,
                            na_action=na_action, data_name=data_name)
        self.family = get_family(family, link)
        self.parsed = parse_formula(formula)
        self.design = build_design(
            self.parsed, data, family=self.family, weights=weights, offset=offset, na_action=na_action
        )
        if self.is_gaussian:
            check_linear_model(self.design)
        self.data_name = data_name
        self._structure = None
        self._rows = None
        self._linear_problem = None
        self._evaluation_problem = None  # linear_problem split for the optimizer's programs, formed on first use
        self._iterative_problem = None  # the iterative path's rows and probes, for _iterative_key's settings
        self._iterative_key = None

    # ------------------------------------------------------------------ structure
    @property
    def structure(self):
        """The block structure (block kinds, entries, entry pairs), built on first use: the iterative path
        (`fit(solver="iterative")`) never needs it, and for a large crossed design its pairs would not fit."""
        if self._structure is None:
            self._build_structure()
        return self._structure

    @property
    def rows(self):
        if self._rows is None:
            self._build_structure()
        return self._rows

    def _build_structure(self) -> None:
        d = self.design
        codes = [t.codes for t in d.terms]
        self._structure, index_parts = build_structure(codes, [t.q for t in d.terms], [t.n_levels for t in d.terms])
        self._rows = row_data(codes, [t.z for t in d.terms], index_parts)

    @property
    def is_gaussian(self) -> bool:
        return getattr(self.family, "name", "gaussian") == "gaussian"

    @property
    def qs(self) -> tuple[int, ...]:
        return tuple(t.q for t in self.design.terms)

    @property
    def n_theta(self) -> int:
        return sum(q * (q + 1) // 2 for q in self.qs)

    @property
    def structures(self):
        """Per term its covariance structure (core/_structures.py): the map from its parameters ψ to its θ."""
        return structures_for(self.design)

    @property
    def psi_names(self) -> list[str]:
        """Names of the covariance parameters ψ the optimizer works on (θ's names when no term is cs()/ar1())."""
        d = self.design
        return psi_names(self.structures, d.group_names, [t.column_names for t in d.terms])

    def theta_start(self) -> np.ndarray:
        return theta_start(self.qs)

    def __repr__(self) -> str:
        d = self.design
        groups = ", ".join(f"{g} ({n} levels)" for g, n in d.ngroups.items())
        family = f"{getattr(self.family, 'name', 'gaussian')} ({getattr(self.family, 'link', 'identity')})"
        data = f" of {self.data_name}" if self.data_name else ""
        return (f"<jaxmlm.Model {d.formula.text}: {family}; {d.n} rows{data}; groups {groups}; "
                f"{d.p} fixed effects, {self.n_theta} theta>")

    def start_theta(self, start=None) -> np.ndarray:
        """θ to start from: lme4's start when `start` is None, else `start`, checked to hold θ in lme4's layout."""
        theta0 = self.theta_start() if start is None else np.asarray(start, dtype=np.float64)
        if theta0.shape != (self.n_theta,):
            raise ValueError(f"start must have {self.n_theta} values (θ in lme4's layout), got shape {theta0.shape}")
        return theta0

    @property
    def linear_problem(self):
        """The Gaussian objective's statistics [Z X y]ᵀW[Z X y], formed once on first use."""
        if self._linear_problem is None:
            d = self.design
            self._linear_problem = make_linear_problem(self.structure, self.rows, d.weights, d.X, d.y - d.offset)
        return self._linear_problem

    def _for_evaluation(self, problem=None):
        """`problem` (default: linear_problem) as the optimizer's programs take it: blocks split by level element
        (`_lmm.split_problem`; formed once for linear_problem)."""
        if problem is None or problem is self.linear_problem:
            if self._evaluation_problem is None:
                self._evaluation_problem = split_problem(self.linear_problem)
            return self._evaluation_problem
        return split_problem(problem)

    @caller_precision
    def deviance(self, theta, reml: bool = False):
        """Profiled deviance (ML) or REML criterion at θ, as lme4's devfun.

        θ as a JAX array (under `jax.enable_x64`): a JAX scalar, traceable (jit, grad, hessian, vmap; no host
        callback). θ as NumPy or a list: a float (np.float64), computed in float64 whatever the caller's setting."""
        self._require_gaussian("deviance")
        if isinstance(theta, jax.Array):  # tracers too
            require_float64("Model.deviance on JAX arrays")
            return profiled_deviance(theta, self._for_evaluation(), reml, host_lapack=False)
        with jax.enable_x64(True):
            return np.float64(self._deviance_value(theta, reml))

    def _deviance_value(self, theta, reml: bool) -> float:
        """The objective at θ as a float, by the fit's own compiled program."""
        return float(deviance_value(jnp.asarray(theta, dtype=jnp.float64), self._for_evaluation(), reml))

    @property
    def theta_names(self) -> list[str]:
        """lme4's names of θ's elements (getME(fit, "theta")): 'Subject.(Intercept)', 'Subject.Days.(Intercept)'."""
        d = self.design
        return theta_names(d.group_names, [t.column_names for t in d.terms])

    def theta_lower(self) -> np.ndarray:
        """lme4's lower bounds on θ: 0 on the diagonal of each T_k, -inf below it."""
        return np.where(theta_diagonal_mask(self.qs), 0.0, -np.inf)

    def problem(self, method: str | None = None, nagq: int = 1):
        """The objective of `method` ('reml', 'ml', 'laplace', 'agq') as a pure JAX function of one flat
        parameter vector, with its start, bounds and names (core/_problem.py; docs/core.md shows its use).
        Linear models: x = θ (β and σ profiled out). Generalized: x = (θ, β[, log dispersion])."""
        require_unstructured(self.structures, "Model.problem()")
        if method is None:
            method = "reml" if self.is_gaussian else ("agq" if nagq > 1 else "laplace")
        method = str(method).lower()
        if method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
        if method in ("reml", "ml"):
            self._require_gaussian(f"method={method!r}")
            return self._linear_objective(method)
        if self.is_gaussian:
            raise ValueError(f"method={method!r} is for generalized models; use 'reml' or 'ml'")
        from ._glmm import glmm_objective

        return glmm_objective(self, method, nagq)

    def _linear_objective(self, method: str) -> LinearObjective:
        d = self.design
        source = LinearRows(structure=self.structure, rows=self.rows, weights=jnp.asarray(d.weights),
                            X=jnp.asarray(d.X), offset=jnp.asarray(d.offset))
        return LinearObjective(data=self._for_evaluation(), x0=jnp.asarray(self.theta_start()),
                               lower=jnp.asarray(self.theta_lower()), source=source, method=method,
                               names=tuple(self.theta_names), beta_names=tuple(d.x_names))

    def _require_gaussian(self, what: str) -> None:
        if not self.is_gaussian:
            raise ValueError(f"{what} is for linear mixed models; this model's family is {self.family.name!r}")

    # ------------------------------------------------------------------ fitting
    def fit(self, method: str | None = None, *, start=None, max_iter: int = 1000, nagq: int | None = None,
            warn: bool = True, dtype: str = "float64", solver: str = "direct",
            solver_options: dict | None = None, approximation: str = "laplace") -> MixedModelResult:
        """Fit by 'reml' or 'ml' (Gaussian), or 'laplace' / 'agq' (binomial, Poisson).

        solver='iterative' (linear models): never factor; conjugate gradients for β and u and a stochastic
        Lanczos estimate of the log-determinant (`_iterative`), for crossed designs whose dense tail will not fit.
        β and u are exact given θ; the objective carries the estimate's error (its standard error is in
        `fit.extra["objective_se"]`). solver_options: n_probes (default 64), sketch_size (n_probes // 2),
        lanczos_steps (30), seed (0), cg_tol (1e-10).

        dtype='float32' (linear models): the optimizer's search runs in single precision on statistics formed in
        double precision, then a double-precision polish starts from its optimum (a few evaluations), and the
        estimates, objective and convergence checks are evaluated in double precision. Single precision cannot
        resolve the deviance of large data to lme4's gradient tolerance (at n = 1M the deviance is ~3e6 and
        float32's spacing there is 0.25), so the polish is what makes the answer float64's. Measured accuracy and
        cost against float64: docs/scale.md."""
        if solver not in ("direct", "iterative"):
            raise ValueError(f"solver must be 'direct' or 'iterative', got {solver!r}")
        if solver == "iterative":
            return self._fit_iterative(method, start=start, max_iter=max_iter, warn=warn, dtype=dtype,
                                       options=dict(solver_options or {}))
        if solver_options:
            raise ValueError("solver_options are for solver='iterative'")
        if self.is_gaussian and (method is None or str(method).lower() in ("reml", "ml")):
            # the statistics first, under the allocator's defaults: their pass's large temporaries go back to the
            # system (under heap_allocations the peak memory of a large design nearly doubled: docs/scale.md)
            self.linear_problem  # noqa: B018
        with fit_allocations():  # the host optimizer's many calls of one program (see _config.heap_allocations)
            return self._fit(method, start=start, max_iter=max_iter, nagq=nagq, warn=warn, dtype=dtype,
                             approximation=approximation)

    def _fit(self, method, *, start, max_iter, nagq, warn, dtype, approximation="laplace") -> MixedModelResult:
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        if method is None:
            method = "reml" if self.is_gaussian else ("agq" if nagq and nagq > 1 else "laplace")
        method = method.lower()
        if method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
        if method in ("reml", "ml"):
            self._require_gaussian(f"method={method!r}")
            return self._fit_linear(method == "reml", start=start, max_iter=max_iter, warn=warn, dtype=dtype)
        if dtype != "float64":
            raise ValueError("dtype='float32' is offered for linear mixed models ('reml', 'ml') only")
        if self.is_gaussian:
            raise ValueError(f"method={method!r} is for binomial and Poisson models; use 'reml' or 'ml'")
        if is_structured(self.structures):  # cs() / ar1() terms: the search runs on their parameters ψ
            from ._structured import fit_glmm_structured

            return fit_glmm_structured(self, method=method, nagq=nagq, start=start, max_iter=max_iter, warn=warn,
                                       approximation=approximation)
        from ._glmm import fit_glmm

        return fit_glmm(self, method=method, nagq=nagq, start=start, max_iter=max_iter, warn=warn,
                        approximation=approximation)

    def _fit_linear(self, reml: bool, *, start=None, max_iter: int = 1000, warn: bool = True,
                    dtype: str = "float64") -> MixedModelResult:
        if is_structured(self.structures):  # cs() / ar1() terms: the search runs on their parameters ψ
            if dtype != "float64":
                raise ValueError("dtype='float32' is not offered for models with cs() or ar1() terms")
            from ._structured import fit_linear_structured

            return fit_linear_structured(self, reml, start=start, max_iter=max_iter, warn=warn)
        problem = self.linear_problem
        search = problem if dtype == "float64" else _cast_problem(problem, jnp.dtype(dtype))
        theta0 = self.start_theta(start)
        res, messages = self._minimize_with_restarts(theta0, start is not None, reml, max_iter, search)
        if search is not problem:  # polish the single-precision optimum in double precision (a few evaluations)
            found = canonical_theta(np.asarray(res.x, dtype=np.float64), self.qs)
            res32 = res
            res = self._minimize(found, reml, max_iter, problem, initial_radius=1e-3)
            if not np.isfinite(float(res.value)):
                res = res32._replace(grad=np.full(self.n_theta, np.nan))  # a float32 gradient: not reused below
            else:
                res = res._replace(n_eval=res.n_eval + res32.n_eval, n_iter=res.n_iter + res32.n_iter)
        theta = canonical_theta(np.asarray(res.x, dtype=np.float64), self.qs)
        theta = self._snap_to_boundary(theta, lambda th: self.deviance(th, reml))
        theta, res = self._leave_boundary_saddle(theta, res, reml, max_iter, messages)
        est = linear_estimates(jnp.asarray(theta), problem, reml)
        objective = float(est["objective"])
        if self._derivative_free:  # as lme4: differences of the deviance (a gradient costs ~5 evaluations here)
            grad, hess = _finite_difference_derivatives(lambda th: self.deviance(th, reml), theta, objective)
        elif theta.size <= _STENCIL_MAX_PARAMS:
            # the optimizer's last gradient is the stencil's centre when θ left it unchanged (one evaluation fewer)
            known = np.asarray(res.grad, dtype=np.float64) if np.array_equal(theta, np.asarray(res.x)) else None
            grad, hess = self._stencil_derivatives(theta, reml, grad=known,
                                                   one_program=self._statistics_size > _STENCIL_MAX_SIZE)
        else:
            grad, hess = linear_diagnostics(jnp.asarray(theta), self._for_evaluation(), reml,
                                            theta.size <= _HESSIAN_MAX_PARAMS)
        optsum = self._diagnose("COBYQA" if self._derivative_free else "BFGS", theta, grad, hess, res, messages,
                                initial=theta0, fmin=objective, method="reml" if reml else "ml", max_iter=max_iter)
        loglik = -objective / 2.0  # lme4's logLik: of the REML criterion for REML fits
        fit = MixedModelResult(
            self,
            method="reml" if reml else "ml",
            theta=theta,
            beta=np.asarray(est["beta"]),
            vcov=np.asarray(est["vcov"]),
            sigma=float(est["sigma"]),
            b=[np.asarray(x) for x in est["b"]],
            objective=objective,
            loglik=loglik,
            optinfo=optsum.info(),
            optsum=optsum,
        )
        if warn:
            self._warn(fit)
        return fit

    def _fit_iterative(self, method, *, start, max_iter: int, warn: bool, dtype: str, options: dict):
        """The iterative path (`_iterative`): COBYQA on the estimated objective (its probes fixed, so smooth in
        θ), lme4's finite-difference convergence checks, estimates at the optimum."""
        from ..core._iterative import iterative_deviance, iterative_estimates, make_iterative_problem

        require_unstructured(self.structures, "solver='iterative'")

        method = "reml" if method is None else str(method).lower()
        if not self.is_gaussian or method not in ("reml", "ml"):
            raise ValueError("solver='iterative' fits linear mixed models ('reml' or 'ml')")
        if dtype != "float64":
            raise ValueError("solver='iterative' runs in float64")
        known = {"n_probes", "lanczos_steps", "seed", "cg_tol", "sketch_size"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown solver_options {unknown}; known: {sorted(known)}")
        n_probes, steps = int(options.get("n_probes", 64)), int(options.get("lanczos_steps", 30))
        if n_probes < 2 or steps < 2:
            raise ValueError("solver_options n_probes and lanczos_steps must be at least 2")
        theta0 = self.start_theta(start)
        reml = method == "reml"
        d = self.design
        key = (n_probes, int(options.get("seed", 0)), int(options.get("sketch_size", n_probes // 2)))
        if self._iterative_key != key:
            self._iterative_problem = make_iterative_problem(
                [t.codes for t in d.terms], [t.z for t in d.terms], [t.n_levels for t in d.terms], d.X,
                d.y - d.offset, d.weights, n_probes=key[0], seed=key[1], sketch_size=key[2])
            self._iterative_key = key
        problem = self._iterative_problem
        settings = dict(lanczos_steps=steps, cg_tol=float(options.get("cg_tol", 1e-10)))

        def objective(th):
            return float(iterative_deviance(jnp.asarray(th, dtype=jnp.float64), problem, reml, **settings)[0])

        lower = np.where(theta_diagonal_mask(self.qs), 0.0, -np.inf)
        res = cobyqa_minimize(objective, canonical_theta(theta0, self.qs), lower, max_eval=max_iter)
        if not np.isfinite(float(res.value)):
            raise DataError("the iterative objective is not finite at the optimizer's end point (the conjugate "
                            "gradients may not have converged: raise solver_options['cg_tol'] or rescale the data)")
        theta = self._snap_to_boundary(canonical_theta(np.asarray(res.x), self.qs), objective)
        est = iterative_estimates(jnp.asarray(theta), problem, reml, **settings)
        value = float(est["objective"])
        grad, hess = _finite_difference_derivatives(objective, theta, value)
        messages = []
        if float(est["cg_residual"]) > 1e-6:
            messages.append(f"conjugate gradients stopped at relative residual {float(est['cg_residual']):.2g}")
        optsum = self._diagnose("COBYQA (iterative)", theta, grad, hess, res, messages, initial=theta0, fmin=value,
                                method=method, max_iter=max_iter)
        fit = MixedModelResult(
            self, method=method, theta=theta, beta=np.asarray(est["beta"]), vcov=np.asarray(est["vcov"]),
            sigma=float(est["sigma"]), b=[np.asarray(x) for x in est["b"]], objective=value, loglik=-value / 2.0,
            optinfo=optsum.info(), optsum=optsum,
            extra=dict(solver="iterative", objective_se=float(est["objective_se"]), n_probes=n_probes,
                       lanczos_steps=steps, cg_iterations=int(est["cg_iterations"])),
        )
        if warn:
            self._warn(fit)
        return fit

    @property
    def _statistics_size(self) -> int:
        """How many numbers an evaluation touches: the prefix blocks, the entry pairs and the dense tail."""
        s = self.structure
        return sum(l * q * q for l, q in zip(s.n_levels, s.qs)) + s.n_pairs + s.m_z**2

    def _stencil_derivatives(self, theta: np.ndarray, reml: bool, delta: float = 1e-5, grad=None,
                             one_program: bool = False):
        """Exact gradient at θ (unless given, finite) and the Hessian by central differences of the gradient
        (symmetrized). one_program: the 2k off-centre gradients in one compiled call, one after another (large
        statistics, where a call of its own costs about twice a gradient inside a program)."""
        problem = self._for_evaluation()

        def gradient(point):
            return np.asarray(deviance_and_gradient(point, problem, reml)[1], dtype=np.float64)

        if grad is None or not np.isfinite(grad).all():
            grad = gradient(theta)
        if one_program:
            hess = central_difference_hessian(lambda points: gradients_at_points(points, problem, reml, 1), theta, delta)
        else:
            hess = central_difference_hessian(lambda points: np.stack([gradient(x) for x in points]), theta, delta)
        return grad, hess

    @property
    def _derivative_free(self) -> bool:
        return self.structure.m_z >= _DERIVATIVE_FREE_TAIL

    def _minimize(self, theta0, reml: bool, max_iter: int, problem=None, initial_radius: float = 1.0):
        """One optimizer run from θ0 on `problem` (default: the float64 statistics): BFGS on the host around the
        compiled value-and-gradient program, or COBYQA for large dense tails (lower bounds 0 on the diagonal of each
        T_k, as lme4). BFGS, not a compiled optimizer loop (`_lmm.fit_linear`): that loop compiles several times
        slower than the value-and-gradient program, most of a first fit, while the host loop adds microseconds
        per evaluation. The price is in run time where evaluations are dear (a call of its own allocates its
        temporaries afresh; `_config.heap_allocations` keeps that cheap when asked; docs/scale.md). A float32
        search stops at float32's tolerances (relative gradient 1e-6, stall 1e-9); `initial_radius` bounds the
        first step (small for a polish)."""
        problem = self._for_evaluation(problem)
        dtype = problem.blocks.tail_ff.dtype
        if not self._derivative_free:
            tolerances = dict(gtol=1e-6, ftol=1e-9) if dtype == jnp.float32 else {}
            # NumPy arguments: jnp.asarray's own dispatch would cost as much as a small model's evaluation
            return host_bfgs_minimize(lambda th: deviance_and_gradient(np.asarray(th, dtype=dtype), problem, reml),
                                      np.asarray(theta0, dtype=np.float64), max_iter=max_iter,
                                      first_step=min(0.25, initial_radius), **tolerances)
        lower = np.where(theta_diagonal_mask(self.qs), 0.0, -np.inf)
        start = canonical_theta(np.asarray(theta0, dtype=np.float64), self.qs)  # same TTᵀ, diagonal ≥ 0
        return cobyqa_minimize(lambda th: float(deviance_value(jnp.asarray(th, dtype=dtype), problem, reml)), start,
                               lower, max_eval=max_iter, initial_radius=initial_radius)

    def _minimize_with_restarts(self, theta0, user_start: bool, reml: bool, max_iter: int, problem=None):
        """Fit from θ0; when an evaluation goes non-finite, restart from scaled starts (and from lme4's start when
        the user gave their own) instead of returning NaN."""
        res = self._minimize(theta0, reml, max_iter, problem)
        if np.isfinite(float(res.value)) and np.isfinite(np.asarray(res.x)).all():
            return res, []
        candidates = [("θ start × 0.5", theta0 * 0.5), ("θ start × 0.1", theta0 * 0.1)]
        if user_start:
            default = self.theta_start()
            candidates += [("lme4's default start", default), ("lme4's default start × 0.1", default * 0.1)]
        for label, th in candidates:
            res = self._minimize(th, reml, max_iter, problem)
            if np.isfinite(float(res.value)) and np.isfinite(np.asarray(res.x)).all():
                return res, [f"restarted from {label} after a non-finite evaluation"]
        raise DataError(
            "the deviance is not finite at any start (the response or weights may be too large or too small "
            "for double precision; rescale them)"
        )

    def _leave_boundary_saddle(self, theta, res, reml: bool, max_iter: int, messages: list):
        """The deviance is even in the sign of each column of T, so a zero column is a stationary point whatever
        the data: an unconstrained optimizer that starts or lands there stays, even where it is a saddle (lme4's
        bounded optimizer steps off it). Probe just off each zero diagonal; if the objective drops, go on from there."""
        zero = np.flatnonzero(theta_diagonal_mask(self.qs) & (theta == 0))
        if zero.size == 0:
            return theta, res
        f0 = self.deviance(theta, reml)
        best, best_value = None, f0 - 1e-9 * (1.0 + abs(f0))
        for idx in [[i] for i in zero] + ([list(zero)] if zero.size > 1 else []):
            probe = theta.copy()
            probe[idx] = 0.01
            value = self.deviance(probe, reml)
            if value < best_value:
                best, best_value = probe, value
        if best is None:
            return theta, res
        res2, _ = self._minimize_with_restarts(best, True, reml, max_iter)
        theta2 = self._snap_to_boundary(canonical_theta(np.asarray(res2.x), self.qs), lambda th: self.deviance(th, reml))
        if not self.deviance(theta2, reml) < f0:
            return theta, res
        messages.append("the optimizer stopped at a saddle point on the boundary (a zero variance); restarted from there")
        return theta2, res2

    def _snap_to_boundary(self, theta: np.ndarray, objective) -> np.ndarray:
        """lme4 keeps diagonal θ ≥ 0 and often lands exactly on 0; we optimize unconstrained, so a variance that
        belongs at the boundary ends near 1e-6. Set such tiny diagonals to 0 when that does not raise the objective."""
        tiny = theta_diagonal_mask(self.qs) & (np.abs(theta) < SINGULAR_TOL) & (theta != 0)
        if not tiny.any():
            return theta
        snapped = theta.copy()
        snapped[tiny] = 0.0
        f_here, f_snapped = objective(theta), objective(snapped)
        if np.isfinite(f_snapped) and f_snapped <= f_here + 1e-10 * abs(f_here):
            return snapped
        return theta

    def _diagnose(self, optimizer, theta, grad, hessian, res, messages, *, initial, fmin, method,
                  max_iter) -> OptSummary:
        """The fit's OptSummary, with lme4's convergence checks: gradient at the optimum and the Hessian's
        eigenvalues (interior θ only). Tolerances are the optimizer's (`_minimize`, `_optimize`)."""
        interior = ~(theta_diagonal_mask(self.qs) & (theta < SINGULAR_TOL))
        tolerances = dict(xtol=1e-6) if optimizer.startswith("COBYQA") else dict(gtol=1e-9, ftol=1e-13)
        return summarize(optimizer=optimizer, method=method, result=res, initial=initial, lower=self.theta_lower(),
                         final=theta, fmin=fmin, grad=grad, hessian=None if hessian is None else np.asarray(hessian),
                         interior=interior, max_evaluations=max_iter, messages=messages, **tolerances)

    @staticmethod
    def _warn(fit: MixedModelResult) -> None:
        if fit.is_singular:
            warnings.warn(SINGULAR_NOTE, SingularFitWarning, stacklevel=user_stacklevel())
        if not fit.converged:
            warnings.warn(
                "; ".join(fit.optinfo.messages) or f"optimizer did not converge (max|grad| = {fit.optinfo.grad_max:.3g})",
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
        else:
            for m in fit.optinfo.messages:
                warnings.warn(m, ConvergenceWarning, stacklevel=user_stacklevel())

    # ------------------------------------------------------------------ conditional variances of b
    def _conditional_variances(self, theta, sigma, extra) -> list[np.ndarray] | None:
        """Var(b | y) per term: σ² T (L_Z L_Zᵀ)⁻¹ Tᵀ blocks, from the Z part of the factor (as lme4's condVar).

        One term: each level's block is L_j⁻ᵀ L_j⁻¹, exact and O(levels). Several terms: the dense inverse of
        ΛᵀZᵀWZΛ + I, for up to 6000 random effects.
        """
        d = self.design
        w = extra.get("working_weights", d.weights) if extra else d.weights
        T = theta_to_matrices(theta, self.qs)
        scale = 1.0 if sigma is None else sigma**2
        if len(d.terms) == 1:
            t = d.terms[0]
            A = np.zeros((t.n_levels, t.q, t.q))
            np.add.at(A, t.codes, w[:, None, None] * t.z[:, :, None] * t.z[:, None, :])
            M = np.einsum("ji,ljk,km->lim", T[0], A, T[0]) + np.eye(t.q)
            C = np.linalg.inv(M)
            return [scale * np.einsum("ij,ljk,mk->lim", T[0], C, T[0])]
        total = sum(t.n_levels * t.q for t in d.terms)
        if total > 6000:
            warnings.warn(
                f"conditional variances need the inverse of a {total}×{total} system; skipped above 6000",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            return None
        import scipy.sparse as sp

        cols, offsets, off = [], [], 0
        for k, t in enumerate(d.terms):
            zl = t.z @ T[k]  # rows of ZΛ for this term
            r = np.repeat(np.arange(d.n), t.q)
            c = off + (t.codes[:, None] * t.q + np.arange(t.q)[None, :]).ravel()
            cols.append(sp.csr_matrix((zl.ravel(), (r, c)), shape=(d.n, total)))
            offsets.append(off)
            off += t.n_levels * t.q
        ZL = sum(cols[1:], cols[0])
        M = (ZL.T @ sp.diags(w) @ ZL).toarray() + np.eye(total)
        C = np.linalg.inv(M)
        out = []
        for k, t in enumerate(d.terms):
            idx = offsets[k] + np.arange(t.n_levels * t.q).reshape(t.n_levels, t.q)
            blocks = C[idx[:, :, None], idx[:, None, :]]
            out.append(scale * np.einsum("ij,ljk,mk->lim", T[k], blocks, T[k]))
        return out

    # ------------------------------------------------------------------ new data (predict)
    def _new_rows(self, newdata, used_terms, allow_new_levels):
        frame = to_pandas(newdata)
        d = self.design
        try:
            X_all = d.x_spec.get_model_matrix(frame, output="pandas")
        except Exception as exc:
            raise ValueError(f"cannot evaluate the fixed-effects part on newdata: {exc}") from None
        X_all.columns = d.x_names_all
        X = X_all[d.x_names].to_numpy(dtype=np.float64)
        offset = np.zeros(len(frame))
        from ..formula._design import _evaluate

        for expr in d.formula.offsets:
            offset = offset + np.asarray(_evaluate(expr, frame, "offset()"), dtype=np.float64)
        zs, codes = [], []
        for k, t in enumerate(d.terms):
            if k not in used_terms:
                zs.append(None)
                codes.append(None)
                continue
            zs.append(t.z_spec.get_model_matrix(frame, output="pandas").to_numpy(dtype=np.float64))
            for name in t.term.factors:
                if name not in frame.columns:
                    raise ValueError(f"newdata lacks grouping column {name!r} needed by {t.term.text}")
            labels = frame[list(t.term.factors)].astype(str).agg(":".join, axis=1)
            lookup = pd.Index(t.levels.astype(str))
            idx = lookup.get_indexer(labels)
            if (idx < 0).any() and not allow_new_levels:
                new = sorted(set(labels[idx < 0]))[:5]
                raise NewLevelError(
                    f"new level(s) {', '.join(map(repr, new))} of grouping factor {t.group_name!r} in newdata; "
                    "use allow_new_levels=True to predict them at the population level"
                )
            codes.append(idx)
        return X, zs, codes, offset, frame.index

    # ------------------------------------------------------------------ other drivers
    def sample(self, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed: int = 0, **kwargs):
        """Posterior draws by NUTS (NumPyro)."""
        require_unstructured(self.structures, "Model.sample()")
        from ..bayes._bayes import sample

        return sample(self, chains=chains, draws=draws, warmup=warmup, seed=seed, **kwargs)

    def update(self, formula: str) -> "Model":
        """The model of another formula on the same data, weights, offset and family, as lme4's update(); R's
        dots work at the start of either side: model.update(". ~ . - Days"), model.update("log(.) ~ .") does not
        (only a bare '.' stands for the old side)."""
        if not isinstance(formula, str) or formula.count("~") != 1:
            raise FormulaError(f"update() takes a formula with one '~', such as '. ~ . - x'; got {formula!r}")
        old_lhs, old_rhs = (part.strip() for part in self.formula.split("~"))
        lhs, rhs = (part.strip() for part in formula.split("~"))
        lhs = old_lhs if lhs == "." else lhs
        if re.match(r"\.(\s*[-+]|$)", rhs):
            rhs = f"{old_rhs} {rhs[1:].strip()}".strip()
        if _BARE_DOT.search(lhs) or _BARE_DOT.search(rhs):
            raise FormulaError(f"update(): a bare '.' stands for a whole side ('. ~ . - x', '. ~ . + z'); got {formula!r}")
        return Model(f"{lhs} ~ {rhs}", **self._source)

    def fit_batch(self, Y, **kwargs):
        """Fit every column of Y (n × m) on this design in one vectorized call."""
        require_unstructured(self.structures, "fit_batch()")
        from ._batch import fit_batch

        return fit_batch(self, Y, **kwargs)


def _data_name(data) -> str | None:
    return getattr(data, "attrs", {}).get("name") if hasattr(data, "attrs") else None


@float64
def lmer(formula: str, data: Any, reml: bool = True, weights: Any = None, offset: Any = None, *,
         na_action: str = "omit", start=None, **kwargs) -> MixedModelResult:
    """Fit a linear mixed model as lme4's lmer(). lme4's spellings: REML= for reml=, start={'theta': ...}."""
    from ._lme4_args import lme4_alias, lmer_start, refuse_lme4_arguments

    reml = lme4_alias(kwargs, "REML", reml, True, "reml")
    refuse_lme4_arguments(kwargs, "lmer")
    start = lmer_start(start)
    model = Model(formula, data, family="gaussian", weights=weights, offset=offset, na_action=na_action,
                  data_name=kwargs.pop("data_name", _data_name(data)))
    return model.fit(method="reml" if reml else "ml", start=start, **kwargs)


@float64
def glmer(formula: str, data: Any, family: Any = "binomial", nagq: int = 1, weights: Any = None,
          offset: Any = None, *, link: str | None = None, na_action: str = "omit", start=None,
          **kwargs) -> MixedModelResult:
    """Fit a generalized linear mixed model as lme4's glmer(); nagq=1 is Laplace, nagq>1 adaptive Gauss–Hermite.
    lme4's spellings: nAGQ= for nagq=, start={'theta': ..., 'fixef': ...}; family a string or a jm.families object."""
    from ._lme4_args import lme4_alias, refuse_lme4_arguments

    nagq = lme4_alias(kwargs, "nAGQ", nagq, 1, "nagq")
    if "REML" in kwargs:
        kwargs["reml"] = kwargs.pop("REML")
    refuse_lme4_arguments(kwargs, "glmer")
    model = Model(formula, data, family=family, weights=weights, offset=offset, link=link, na_action=na_action,
                  data_name=kwargs.pop("data_name", _data_name(data)))
    if model.is_gaussian:  # lme4's glmer hands gaussian (identity) to lmer, REML by default, with a warning
        warnings.warn(
            "calling glmer() with family=gaussian (identity link) as a shortcut to lmer() is deprecated; "
            "please call lmer() directly",
            FutureWarning,
            stacklevel=user_stacklevel(),
        )
        return model.fit(method="reml" if kwargs.pop("reml", True) else "ml", start=start, **kwargs)
    return model.fit(method="agq" if nagq > 1 else "laplace", nagq=nagq, start=start, **kwargs)


def _finite_difference_derivatives(objective, theta: np.ndarray, f0: float, delta: float = 1e-4):
    """Gradient and Hessian by lme4's deriv12 stencil (central differences of the objective, step 1e-4;
    1 + 2k + 2k(k-1) evaluations)."""
    k = theta.size
    grad, hess = np.zeros(k), np.zeros((k, k))

    def f(*steps):
        x = theta.copy()
        for i, s in steps:
            x[i] += s * delta
        return objective(x)

    plus = [f((j, 1)) for j in range(k)]
    minus = [f((j, -1)) for j in range(k)]
    for j in range(k):
        grad[j] = (plus[j] - minus[j]) / (2 * delta)
        hess[j, j] = (plus[j] - 2 * f0 + minus[j]) / delta**2
        for i in range(j):
            hess[i, j] = hess[j, i] = (
                f((j, 1), (i, 1)) - f((j, 1), (i, -1)) - f((j, -1), (i, 1)) + f((j, -1), (i, -1))
            ) / (4 * delta**2)
    return grad, hess


def _cast_problem(problem, dtype):
    """The statistics (formed in float64) in another floating dtype, for a lower-precision search."""
    import jax

    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, problem)
