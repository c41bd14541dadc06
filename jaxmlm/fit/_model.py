"""The Model driver: structure built once from formula and data, then fitted (and refitted) many ways.

`Model` parses, builds the design and the block structure (NumPy, outside jit) and keeps them; `fit` runs the
compiled objective and optimizer and returns a `MixedModelResult`. `lmer` and `glmer` are lme4's entry points.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

import jax

from .._config import caller_precision, fit_allocations, float64, float64_methods, require_float64
from ..core._blocks import build_structure, host_to_device, row_data
from ..optim._summary import OptSummary
from ..core._covariance import theta_diagonal_mask, theta_names, theta_start, theta_to_matrices
from ..core._structures import is_structured, psi_names, require_unstructured, structures_for
from ..formula._design import build_design, check_linear_model, row_labels, to_pandas
from .._errors import FormulaError, NewLevelError
from .._warn import user_stacklevel
from ..formula._family import get_family
from ..core._lmm import deviance_value, make_linear_problems, profiled_deviance, split_problem
from ..results._results import MixedModelResult
from ._boundary import diagnose, warn_fit
from ._linear import finite_difference_derivatives as _finite_difference_derivatives  # noqa: F401 (tests)
from ..formula._terms import parse_formula

if TYPE_CHECKING:
    from ..core._problem import LinearObjective

__all__ = ["Model", "lmer", "glmer"]

_METHODS = ("reml", "ml", "laplace", "agq")
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
        self._glmm_problem = None
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
            # with their split form for the optimizer's programs (`_for_evaluation`): one program for both
            self._linear_problem, self._evaluation_problem = make_linear_problems(
                self.structure, self.rows, d.weights, d.X, d.y - d.offset)
        return self._linear_problem

    @property
    def glmm_problem(self):
        """The GLMM objective's data (core/_pirls.py's GlmmProblem: structure, rows, X, response, prior weights,
        offset, the family's constant), formed once on first use."""
        if self._glmm_problem is None:
            from ..core._pirls import GlmmProblem  # here: a linear fit's first use imports none of PIRLS

            d, fam = self.design, self.family
            self._glmm_problem = GlmmProblem(
                structure=self.structure, rows=self.rows, X=host_to_device(d.X), y=host_to_device(d.y),
                weights=host_to_device(d.weights), offset=host_to_device(d.offset),
                constant=host_to_device(fam.log_constant(d.y, d.weights, d.extra)), family=fam)
        return self._glmm_problem

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
        Linear models: x = θ (β and σ profiled out). Generalized: x = (θ, β[, log dispersion]). With cs() / ar1()
        terms θ is replaced by the structures' parameters ψ (`psi_names`; a `StructuredObjective`)."""
        problem = self._theta_problem(method, nagq)
        if not is_structured(self.structures):
            return problem
        from ..core._problem import StructuredObjective
        from ..core._structures import psi_lower, psi_start

        k, structures = self.n_theta, self.structures
        return StructuredObjective(
            inner=problem, structures=structures, names=tuple(self.psi_names) + problem.names[k:],
            x0=jnp.concatenate([jnp.asarray(psi_start(structures)), problem.x0[k:]]),
            lower=jnp.concatenate([jnp.asarray(psi_lower(structures)), problem.lower[k:]]))

    def _theta_problem(self, method, nagq: int):
        """The objective over θ itself (every term unstructured; `problem` composes a structure's map)."""
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
        from ..core._problem import LinearObjective, LinearRows  # here: fits do not use the protocol's objects

        d = self.design
        source = LinearRows(structure=self.structure, rows=self.rows, weights=host_to_device(d.weights),
                            X=host_to_device(d.X), offset=host_to_device(d.offset))
        return LinearObjective(data=self._for_evaluation(), x0=host_to_device(self.theta_start()),
                               lower=host_to_device(self.theta_lower()), source=source, method=method,
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
        lanczos_steps (30), seed (0), cg_tol (1e-10), products ("auto": the θ-free cross-products between terms
        formed once while they are small against the rows, else "rows": gathers and segment sums over the rows;
        "dense" or "rows" to force either; the same estimate to rounding).

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
        from ._linear import fit_linear

        return fit_linear(self, reml, start=start, max_iter=max_iter, warn=warn, dtype=dtype)

    def _fit_iterative(self, method, *, start, max_iter: int, warn: bool, dtype: str, options: dict):
        """The iterative path (`_iterative`): COBYQA on the estimated objective (its probes fixed, so smooth in
        θ), lme4's finite-difference convergence checks, estimates at the optimum."""
        from ..core._iterative import make_iterative_problem

        require_unstructured(self.structures, "solver='iterative'", instead="solver='direct' (the default)")

        method = "reml" if method is None else str(method).lower()
        if not self.is_gaussian or method not in ("reml", "ml"):
            raise ValueError("solver='iterative' fits linear mixed models ('reml' or 'ml')")
        if dtype != "float64":
            raise ValueError("solver='iterative' runs in float64")
        known = {"n_probes", "lanczos_steps", "seed", "cg_tol", "sketch_size", "products"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown solver_options {unknown}; known: {sorted(known)}")
        n_probes, steps = int(options.get("n_probes", 64)), int(options.get("lanczos_steps", 30))
        if n_probes < 2 or steps < 2:
            raise ValueError("solver_options n_probes and lanczos_steps must be at least 2")
        products = options.get("products", "auto")
        if products not in ("auto", "rows", "dense"):
            raise ValueError(f"solver_options products must be 'auto', 'rows' or 'dense', got {products!r}")
        theta0 = self.start_theta(start)
        d = self.design
        key = (n_probes, int(options.get("seed", 0)), int(options.get("sketch_size", n_probes // 2)), products)
        if self._iterative_key != key:
            self._iterative_problem = make_iterative_problem(
                [t.codes for t in d.terms], [t.z for t in d.terms], [t.n_levels for t in d.terms], d.X,
                d.y - d.offset, d.weights, n_probes=key[0], seed=key[1], sketch_size=key[2], products=products)
            self._iterative_key = key
        problem = self._iterative_problem
        settings = dict(lanczos_steps=steps, cg_tol=float(options.get("cg_tol", 1e-10)))

        from ._linear import fit_iterative

        return fit_iterative(self, method, problem, theta0, settings=settings, max_iter=max_iter, warn=warn,
                             extra=dict(n_probes=n_probes, lanczos_steps=steps))

    @property
    def _statistics_size(self) -> int:
        """How many numbers an evaluation touches: the prefix blocks, the entry pairs and the dense tail."""
        s = self.structure
        return sum(l * q * q for l, q in zip(s.n_levels, s.qs)) + s.n_pairs + s.m_z**2

    def _stencil_derivatives(self, theta: np.ndarray, reml: bool, delta: float = 1e-5, grad=None,
                             one_program: bool = False):
        """`_linear.stencil_derivatives` on this model's statistics."""
        from ._linear import stencil_derivatives

        return stencil_derivatives(self._for_evaluation(), theta, reml, delta, grad, one_program)

    @property
    def _derivative_free(self) -> bool:
        return self.structure.m_z >= _DERIVATIVE_FREE_TAIL

    def _diagnose(self, optimizer, theta, grad, hessian, res, messages, *, initial, fmin, method,
                  max_iter) -> OptSummary:
        """The OptSummary of a fit at θ (`_boundary.diagnose`)."""
        return diagnose(optimizer, method, theta, grad, hessian, res, messages, lower=self.theta_lower(),
                        initial=initial, fmin=fmin, max_iter=max_iter)

    @staticmethod
    def _warn(fit: MixedModelResult) -> None:
        warn_fit(fit)

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
            labels = row_labels(frame, t.term.factors)
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
        require_unstructured(self.structures, "Model.sample()",
                             instead="fit() and fit.bootstrap() for a sampling distribution of the estimates")
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
