"""Fitted-model results: lme4's accessors (fixef, VarCorr, ranef, coef, predict, simulate, summary) and tidy().

A result holds plain NumPy numbers and a reference to its Model (design and structure); nothing here is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from .._compile import jit
from .._config import float64_methods
from ..core._covariance import term_covariances, theta_diagonal_mask, theta_to_matrices, varcorr_frame

__all__ = ["OptimizerInfo", "MixedModelResult"]

SINGULAR_TOL = 1e-4  # lme4's isSingular() tolerance on diagonal θ


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """How the optimizer ended: lme4 reports the same things in its 'optinfo'."""

    method: str
    converged: bool
    n_iter: int
    n_eval: int
    grad_max: float  # max |∂objective/∂parameter| at the optimum
    hessian_eigenvalues: np.ndarray | None = None
    messages: tuple[str, ...] = ()


@float64_methods
class MixedModelResult:
    """A fitted linear or generalized linear mixed model."""

    def __init__(
        self,
        model,
        *,
        method: str,
        theta: np.ndarray,
        beta: np.ndarray,
        vcov: np.ndarray,
        sigma: float | None,
        b: list[np.ndarray],
        objective: float,
        loglik: float,
        optinfo: OptimizerInfo,
        condvar: list[np.ndarray] | None = None,
        extra: dict | None = None,
        optsum=None,
    ):
        self.model = model
        self.method = method
        self._theta = np.asarray(theta, dtype=np.float64)
        self._beta = np.asarray(beta, dtype=np.float64)
        self._vcov = np.asarray(vcov, dtype=np.float64)
        self._sigma = None if sigma is None else float(sigma)
        self._b = [np.asarray(x) for x in b]
        self._objective = float(objective)
        self._loglik = float(loglik)
        self.optinfo = optinfo
        self.optsum = optsum  # what the optimizer did (optim/_summary.OptSummary; MixedModels.jl's optsum)
        self._condvar = condvar
        self.extra = extra or {}

    # ------------------------------------------------------------------ basic numbers
    @property
    def design(self):
        return self.model.design

    @property
    def family(self):
        """The model's family; for a family with a dispersion parameter, with the fitted value filled in."""
        return self.extra.get("family", self.model.family)

    @property
    def dispersion(self) -> float | None:
        """R's sigma(fit) from glmmTMB for a family with a dispersion parameter (NB2: θ, as lme4's
        getME(fit, "glmer.nb.theta"); NB1 and beta: φ; Gamma and inverse Gaussian: σ); None otherwise."""
        return self.extra.get("dispersion")

    @property
    def dispersion_se(self) -> float | None:
        """The dispersion's standard error, from the joint Hessian in (θ, β, log d) by the delta method."""
        return self.extra.get("dispersion_se")

    @property
    def reml(self) -> bool:
        return self.method == "reml"

    @property
    def is_linear(self) -> bool:
        return self.method in ("reml", "ml")

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates; columns dropped for rank deficiency show NaN, as in lme4's fixef(add.dropped=TRUE)."""
        d = self.design
        values = dict(zip(d.x_names, self._beta))
        return pd.Series([values.get(n, np.nan) for n in d.x_names_all], index=d.x_names_all, name="Estimate")

    @property
    def se(self) -> pd.Series:
        d = self.design
        values = dict(zip(d.x_names, np.sqrt(np.diag(self._vcov))))
        return pd.Series([values.get(n, np.nan) for n in d.x_names_all], index=d.x_names_all, name="Std. Error")

    @property
    def vcov(self) -> pd.DataFrame:
        names = self.design.x_names
        return pd.DataFrame(self._vcov, index=names, columns=names)

    @property
    def theta(self) -> np.ndarray:
        return self._theta.copy()

    @property
    def sigma(self) -> float | None:
        return self._sigma

    @property
    def loglik(self) -> float:
        return self._loglik

    @property
    def deviance(self) -> float:
        return -2.0 * self._loglik

    @property
    def objective(self) -> float:
        return self._objective

    @property
    def n_params(self) -> int:
        """Parameters counted by AIC/BIC: β, θ (or a cs()/ar1() model's ψ), and σ for the Gaussian family."""
        return (len(self._beta) + int(self.extra.get("n_covariance", len(self._theta)))
                + (1 if self._sigma is not None else 0)
                + int(self.extra.get("n_dispersion", 0)))

    @property
    def aic(self) -> float:
        return -2.0 * self._loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self._loglik + np.log(self.nobs) * self.n_params

    @property
    def nobs(self) -> int:
        return int(self.design.n)

    @property
    def ngroups(self) -> dict[str, int]:
        return dict(self.design.ngroups)

    @property
    def is_singular(self) -> bool:
        mask = theta_diagonal_mask(self.model.qs)
        return bool(np.any(self._theta[mask] < SINGULAR_TOL))

    @property
    def converged(self) -> bool:
        return bool(self.optinfo.converged)

    # ------------------------------------------------------------------ variance components
    def _covariances(self) -> list[np.ndarray]:
        return term_covariances(self._theta, self.model.qs, self._sigma)

    def varcorr(self) -> pd.DataFrame:
        d = self.design
        return varcorr_frame(d.group_names, [t.column_names for t in d.terms], self._covariances(), self._sigma)

    # ------------------------------------------------------------------ random effects
    def _grouped_terms(self) -> dict[str, list[int]]:
        """Terms by grouping factor (terms sharing a factor, e.g. from '||', are shown together as in lme4)."""
        out: dict[str, list[int]] = {}
        for k, t in enumerate(self.design.terms):
            out.setdefault(t.group_name, []).append(k)
        return out

    def ranef(self, condvar: bool = True, long: bool = False):
        """Conditional modes of the random effects, one DataFrame per grouping factor (levels × columns).

        With condvar=True each frame carries `attrs['condvar']`: the conditional covariance blocks (levels × q × q).
        long=True returns lme4's as.data.frame(ranef(fit, condVar=TRUE)): grpvar, term, grp, condval, condsd.
        """
        d = self.design
        cv = self.condvar() if condvar else None
        frames = {}
        for grp, ks in self._grouped_terms().items():
            cols, vals, names = [], [], []
            for k in ks:
                for c, name in enumerate(d.terms[k].column_names):
                    names.append(name)
                    vals.append(self._b[k][:, c])
                    cols.append((k, c))
            frame = pd.DataFrame(np.column_stack(vals), index=d.terms[ks[0]].levels.astype(str), columns=names)
            if cv is not None:
                q = len(cols)
                blocks = np.zeros((frame.shape[0], q, q))
                pos = 0
                for k in ks:
                    qk = d.terms[k].q
                    blocks[:, pos : pos + qk, pos : pos + qk] = cv[k]
                    pos += qk
                frame.attrs["condvar"] = blocks
            frames[grp] = frame
        if not long:
            return frames
        rows = []
        for grp, frame in frames.items():
            blocks = frame.attrs.get("condvar")
            for c, term in enumerate(frame.columns):
                sd = np.sqrt(blocks[:, c, c]) if blocks is not None else np.full(frame.shape[0], np.nan)
                rows.append(
                    pd.DataFrame(
                        dict(grpvar=grp, term=term, grp=frame.index, condval=frame[term].to_numpy(), condsd=sd)
                    )
                )
        return pd.concat(rows, ignore_index=True)

    def condvar(self) -> list[np.ndarray] | None:
        """Conditional covariance of b per term (levels × q × q), computed on first use."""
        if self._condvar is None:
            self._condvar = self.model._conditional_variances(self._theta, self._sigma, self.extra)
        return self._condvar

    def coef(self) -> dict[str, pd.DataFrame]:
        """Per-level coefficients: fixed effects plus the level's random effects (lme4's coef())."""
        fe = self.fixef
        out = {}
        for grp, frame in self.ranef(condvar=False).items():
            table = pd.DataFrame(np.tile(fe.to_numpy(), (frame.shape[0], 1)), index=frame.index, columns=fe.index)
            for col in frame.columns:
                if col in table.columns:
                    table[col] = table[col] + frame[col]
                else:
                    table[col] = frame[col]
            out[grp] = table
        return out

    # ------------------------------------------------------------------ fitted values and prediction
    def _linear_predictor(self, X, zs, codes, offset, terms_used) -> np.ndarray:
        eta = X @ self._beta + offset
        for k in terms_used:
            idx = codes[k]
            known = idx >= 0
            contrib = np.zeros(X.shape[0])
            contrib[known] = np.sum(zs[k][known] * self._b[k][idx[known]], axis=1)
            eta = eta + contrib
        return eta

    def _inverse_link(self, eta: np.ndarray) -> np.ndarray:
        fam = self.family
        if not hasattr(fam, "linkinv"):
            return eta
        eta = np.asarray(eta, dtype=np.float64)
        try:
            return np.asarray(_inverse_link_program(eta, family=fam))
        except TypeError:  # a family that cannot be a static argument (unhashable): its operations one by one
            return np.asarray(fam.linkinv(eta))

    def linear_predictor(self) -> np.ndarray:
        d = self.design
        return self._linear_predictor(
            d.X, [t.z for t in d.terms], [t.codes for t in d.terms], d.offset, range(len(d.terms))
        )

    def fitted(self) -> pd.Series:
        """Fitted values on the response scale (conditional on the random effects)."""
        return pd.Series(self._inverse_link(self.linear_predictor()), index=self.design.row_index, name="fitted")

    def residuals(self, type: str | None = None, scaled: bool = False) -> pd.Series:
        """Residuals as lme4's residuals.merMod: 'response' (y − fitted), 'pearson', 'deviance' (sign(y − μ) times
        the root of the unit deviance) or 'working' ((y − μ) dη/dμ); by default 'deviance' for a GLMM and
        'response' for a linear model, as lme4. scaled divides by σ."""
        d = self.design
        if type is None:
            type = "response" if self.is_linear else "deviance"
        eta = self.linear_predictor()
        mu = self._inverse_link(eta)
        r = d.y - mu
        if type == "pearson":
            var = np.asarray(self.family.variance(mu)) if hasattr(self.family, "variance") else 1.0
            r = r * np.sqrt(d.weights / var)
        elif type == "deviance":
            if hasattr(self.family, "deviance_residuals"):  # the unit deviances: 2 w (log-likelihood gaps) ≥ 0
                unit = np.asarray(self.family.deviance_residuals(d.y, mu, d.weights))
                r = np.sign(r) * np.sqrt(np.maximum(unit, 0.0))
            else:
                r = r * np.sqrt(d.weights)
        elif type == "working":
            if hasattr(self.family, "mu_eta"):
                r = r / np.asarray(self.family.mu_eta(eta))
        elif type != "response":
            raise ValueError(f"type must be 'response', 'pearson', 'deviance' or 'working', got {type!r}")
        if scaled and self._sigma is not None:
            r = r / self._sigma
        return pd.Series(r, index=d.row_index, name="residuals")

    def _terms_for(self, re_form) -> list[int]:
        d = self.design
        if re_form is None:
            return list(range(len(d.terms)))
        if re_form is False or (isinstance(re_form, float) and np.isnan(re_form)):
            return []
        if isinstance(re_form, str):
            text = re_form.replace(" ", "")
            if text in ("~0", "0", "NA", "~NA", ""):
                return []
            from ..formula._terms import parse_formula

            parsed = parse_formula("y " + (re_form if re_form.strip().startswith("~") else "~" + re_form))
            wanted = {(t.lhs.replace(" ", ""), t.group_name) for t in parsed.random}
            chosen = [k for k, t in enumerate(d.terms) if (t.term.lhs.replace(" ", ""), t.group_name) in wanted]
            if len(chosen) != len(wanted):
                raise ValueError(f"re_form {re_form!r} names random-effects terms that are not in the model")
            return chosen
        raise ValueError(f"re_form must be None, '~0'/NA, or a formula of the model's random terms; got {re_form!r}")

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False, type: str = "response",
                interval=None, level: float = 0.95, se_fit: bool = False):
        """Predictions as lme4's predict.merMod: re_form=None uses all random effects, '~0' (or NA) none.

        New levels of a grouping factor get zero random effects with allow_new_levels=True, else raise.
        type is 'response' or 'link'. With interval ('confidence' or 'prediction', the latter adding σ²) or
        se_fit=True, a DataFrame with columns fit, se, lower, upper (see results/_predict.py for the method).
        """
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        if interval is not None or se_fit:
            from ._predict import check_interval

            check_interval(self, interval, level)
        d = self.design
        used = self._terms_for(re_form)
        if newdata is None:
            X, zs, codes, offset = d.X, [t.z for t in d.terms], [t.codes for t in d.terms], d.offset
            index = d.row_index
        else:
            X, zs, codes, offset, index = self.model._new_rows(newdata, used, allow_new_levels)
        if interval is not None or se_fit:
            from ._predict import predict_with_se

            return predict_with_se(self, (X, zs, codes, offset, index), used, type, interval, float(level))
        eta = self._linear_predictor(X, zs, codes, offset, used)
        out = eta if type == "link" else self._inverse_link(eta)
        return pd.Series(out, index=index, name="predicted")

    def simulate(self, n: int = 1, seed: int = 0, use_u: bool = False) -> pd.DataFrame:
        """n responses simulated from the fitted model (new random effects unless use_u=True), as lme4's simulate.
        Binomial responses come as proportions of successes, the form `fit_batch` takes (lme4 returns a
        successes/failures matrix for a cbind() response): multiply by the trials for counts."""
        sims = self._simulate_draws(np.random.default_rng(seed), n, use_u)
        return pd.DataFrame(sims, index=self.design.row_index, columns=[f"sim_{i + 1}" for i in range(n)])

    def _simulate_draws(self, rng, n: int, use_u: bool = False) -> np.ndarray:
        """n simulated responses (rows × n) from the generator rng; successive calls on one generator continue
        one sequence, so a bootstrap drawn in blocks gets the samples that one call would give."""
        d = self.design
        T = theta_to_matrices(self._theta, self.model.qs)
        sims = np.empty((d.n, n))
        base = d.X @ self._beta + d.offset
        scale = 1.0 if self._sigma is None else self._sigma
        for i in range(n):
            eta = base.copy()
            for k, t in enumerate(d.terms):
                if use_u:
                    b = self._b[k]
                else:
                    b = scale * rng.standard_normal((t.n_levels, t.q)) @ T[k].T
                eta += np.sum(t.z * b[t.codes], axis=1)
            if hasattr(self.family, "simulate"):
                sims[:, i] = self.family.simulate(rng, self._inverse_link(eta), d.weights, d.extra)
            else:
                w = np.where(d.weights > 0, d.weights, np.inf)
                sims[:, i] = eta + scale * rng.standard_normal(d.n) / np.sqrt(w)
        return sims

    # ------------------------------------------------------------------ display
    def summary(self, ddf: str | None = None):
        """lme4's summary; ddf="satterthwaite" or "kenward-roger" adds lmerTest's degrees of freedom and p-values to
        the fixed effects (linear models)."""
        from ._display import Summary

        if ddf is not None:
            self.t_tests(ddf)  # checks ddf and the model before anything prints
        return Summary(self, ddf)

    def t_tests(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """t-tests of the fixed effects as lmerTest's summary: Estimate, Std. Error, df, t value, Pr(>|t|), one row
        per (kept) fixed effect. ddf="satterthwaite" (lmerTest's default) or "kenward-roger" (pbkrtest's adjusted
        covariance and df; REML fits). Linear mixed models only."""
        from ..core._structures import require_unstructured
        from ..inference._satterthwaite import ddf_method

        method = ddf_method(ddf)
        if method != "satterthwaite":
            require_unstructured(self.model.structures, f"t_tests(ddf={ddf!r})",
                                 instead="t_tests(ddf='satterthwaite')")
        tables = self.__dict__.setdefault("_t_test_tables", {})
        if method not in tables:  # derivatives of the variance parameters: computed once per fit and method
            if method == "satterthwaite":
                from ..inference._satterthwaite import satterthwaite_table as table
            else:
                from ..inference._kenward_roger import kr_table as table
            tables[method] = table(self)
        return tables[method].copy()

    def __repr__(self) -> str:
        from ._display import short_text

        return short_text(self)

    def tidy(self) -> pd.DataFrame:
        """One row per parameter, with broom.mixed's columns: effect, group, term, estimate, std.error, statistic."""
        fe, se = self.fixef, self.se
        rows = [
            dict(effect="fixed", group=None, term=name, estimate=fe[name], **{"std.error": se[name]},
                 statistic=fe[name] / se[name])
            for name in fe.index
        ]
        for _, r in self.varcorr().iterrows():
            if r["grp"] == "Residual":
                rows.append(dict(effect="ran_pars", group="Residual", term="sd__Observation", estimate=r["sdcor"]))
            elif pd.isna(r["var2"]):
                rows.append(dict(effect="ran_pars", group=r["grp"], term=f"sd__{r['var1']}", estimate=r["sdcor"]))
            else:
                rows.append(
                    dict(effect="ran_pars", group=r["grp"], term=f"cor__{r['var1']}.{r['var2']}", estimate=r["sdcor"])
                )
        if self.dispersion is not None:  # a dispersion family's parameter, with its standard error
            rows.append(dict(effect="ran_pars", group="Residual", term=self.family.dispersion_name,
                             estimate=self.dispersion, **{"std.error": self.dispersion_se}))
        return pd.DataFrame(rows, columns=["effect", "group", "term", "estimate", "std.error", "statistic"])

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON output."""
        return dict(
            formula=self.design.formula.text,
            method=self.method,
            family=getattr(self.family, "name", "gaussian"),
            nobs=self.nobs,
            ngroups=self.ngroups,
            objective=self.objective,
            loglik=self.loglik,
            aic=self.aic,
            bic=self.bic,
            theta=self._theta.tolist(),
            fixef={k: (None if np.isnan(v) else float(v)) for k, v in self.fixef.items()},
            se={k: (None if np.isnan(v) else float(v)) for k, v in self.se.items()},
            sigma=self._sigma,
            dispersion=self.dispersion,
            varcorr=self.varcorr().replace({np.nan: None}).to_dict(orient="records"),
            singular=self.is_singular,
            converged=self.converged,
        )

    # ------------------------------------------------------------------ intervals (see _confint, _bootstrap)
    def confint(self, method: str = "profile", level: float = 0.95, parm=None, **kwargs) -> pd.DataFrame:
        """Confidence intervals as lme4's confint: method 'profile', 'wald' or 'boot' (kwargs: nsim, seed)."""
        from ..inference._confint import confint

        return confint(self, method=method, level=level, parm=parm, **kwargs)

    def anova(self, *others, names=None, refit: bool = True, type=None, ddf: str = "satterthwaite") -> pd.DataFrame:
        """lme4's anova(): alone, the sequential F table of the fixed-effect terms; with other fits, the
        likelihood-ratio tests of all of them (`jm.anova`). type=3 or type=1 (one linear model): lmerTest's
        Type III or Type I F tests with ddf="satterthwaite" or "kenward-roger" denominator df."""
        from ..inference._anova import anova

        return anova(self, *others, names=names, refit=refit, type=type, ddf=ddf)

    def emmeans(self, specs, by=None, type: str = "link", pairwise: bool = False, adjust: str = "tukey",
                level: float = 0.95, lmer_df: str = "satterthwaite"):
        """Estimated marginal means as emmeans (its reference grid: numeric covariates at their means, other
        factors averaged with equal weights), with pairwise contrasts and adjusted p-values (pairwise=True returns
        (means, contrasts)); see inference/_emmeans.py."""
        from ..inference._emmeans import emmeans

        return emmeans(self, specs, by=by, type=type, pairwise=pairwise, adjust=adjust, level=level,
                       lmer_df=lmer_df)

    def getme(self, name: str):
        """lme4's getME(fit, name): "X", "Z", "Zt", "Lambda", "Lambdat" (SciPy sparse), "Tlist", "theta", "beta",
        "b", "u", "sigma", "y", "mu", "offset", "weights", "flist", "cnms", "Gp", "lower", "is_REML", "n_rtrms"."""
        from ._getme import getme

        return getme(self, name)

    def hatvalues(self) -> pd.Series:
        """Leverages (the hat matrix's diagonal) of a linear mixed model, as lme4's hatvalues()."""
        from ._getme import hatvalues

        return pd.Series(hatvalues(self), index=self.design.row_index, name="hatvalues")

    def drop1(self, test: str | None = None) -> pd.DataFrame:
        """lme4's drop1(): AIC (and with test="Chisq" the likelihood-ratio test) of each droppable fixed term."""
        from ..inference._anova import drop1

        return drop1(self, test=test)

    def bootstrap(self, n: int = 500, seed: int = 0, **kwargs):
        """Parametric bootstrap: n samples simulated from the fit, refitted in one batch (BootstrapResult)."""
        from ..inference._bootstrap import bootstrap

        return bootstrap(self, n, seed, **kwargs)


@jit(static_argnames=("family",))
def _inverse_link_program(eta, family):
    """The family's inverse link as one program of jaxmlm's (kept by the program store: a later session's fitted
    values compile nothing; eagerly, each of its JAX operations would compile on its own)."""
    return family.linkinv(eta)

