"""The posterior from ``Model.sample``: draws, summary table with convergence diagnostics, predictions, ArviZ.

Draws are stored by chain (chains × draws × …). Diagnostics follow Vehtari et al. (2021): split R-hat
(``numpyro.diagnostics.split_gelman_rubin``) and bulk effective sample size, the effective sample size
(``numpyro.diagnostics.effective_sample_size``) of the rank-normalized split chains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from .._config import float64_methods
from .._memory import check_fits_in_memory
from .._memory import chunk_size as memory_chunk_size

__all__ = ["Posterior", "split_rhat", "ess_bulk"]



def split_rhat(x: np.ndarray) -> float:
    """Split R-hat of draws x (chains × draws)."""
    from numpyro.diagnostics import split_gelman_rubin

    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] < 4 or np.ptp(x) == 0:
        return float("nan")
    return float(split_gelman_rubin(x))


def ess_bulk(x: np.ndarray) -> float:
    """Bulk ESS of draws x (chains × draws): ESS of the rank-normalized split chains."""
    from numpyro.diagnostics import effective_sample_size

    x = np.asarray(x, dtype=np.float64)
    c, d = x.shape
    half = d // 2
    if half < 2 or np.ptp(x) == 0:
        return float("nan")
    split = np.concatenate([x[:, :half], x[:, d - half :]], axis=0)
    ranks = stats.rankdata(split, method="average").reshape(split.shape)
    z = special.ndtri((ranks - 0.375) / (split.size + 0.25))
    return float(effective_sample_size(z))


def _inverse_link(eta: np.ndarray, link: str) -> np.ndarray:
    if link == "logit":
        return special.expit(eta)
    if link == "probit":
        return special.ndtr(eta)
    if link == "cloglog":
        return -np.expm1(-np.exp(eta))
    if link == "log":
        return np.exp(eta)
    return eta


@float64_methods
class Posterior:
    """Posterior draws of a multilevel model (NUTS)."""

    def __init__(self, model, *, beta, theta, sigma, sd, cor, b, diverging, family, link, hyper=None, mcmc=None):
        self.model = model
        self._beta = np.asarray(beta)  # chains × draws × p
        self._theta = np.asarray(theta)
        self._sigma = None if sigma is None else np.asarray(sigma)
        self._sd = [np.asarray(s) for s in sd]  # per term: chains × draws × q (absolute standard deviations)
        self._cor = [None if c is None else np.asarray(c) for c in cor]  # per term: chains × draws × q × q
        self._b = [np.asarray(x) for x in b]  # per term: chains × draws × levels × q
        self._diverging = np.asarray(diverging, dtype=bool)
        self.family = family
        self.link = link
        self.hyper = hyper
        self.mcmc = mcmc
        self._draws: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ sizes and names
    @property
    def design(self):
        return self.model.design

    @property
    def chains(self) -> int:
        return int(self._beta.shape[0])

    @property
    def n_draws(self) -> int:
        return int(self._beta.shape[1])

    @property
    def divergences(self) -> int:
        """Number of divergent transitions after warmup (all chains)."""
        return int(self._diverging.sum())

    @property
    def divergences_per_chain(self) -> np.ndarray:
        return self._diverging.sum(axis=1)

    def _scalar_draws(self) -> dict[str, np.ndarray]:
        """Summary parameters in order: fixed effects, per term sd_ then cor_ rows, then sigma."""
        d = self.design
        out: dict[str, np.ndarray] = {}
        for j, name in enumerate(d.x_names):
            out[name] = self._beta[..., j]
        for k, (grp, t) in enumerate(zip(d.group_names, d.terms)):
            names = t.column_names
            for i, name in enumerate(names):
                out[f"sd_{name}|{grp}"] = self._sd[k][..., i]
            if self._cor[k] is not None:
                for c in range(len(names)):
                    for r in range(c + 1, len(names)):
                        out[f"cor_{names[r]}.{names[c]}|{grp}"] = self._cor[k][..., r, c]
        if self._sigma is not None:
            out["sigma"] = self._sigma
        return out

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """name → chains × draws × …: every summary parameter by its summary name, plus 'beta' (… × p),
        'theta' (… × len(θ), lme4's layout) and 'b_<group>' (… × levels × q) per random-effects term."""
        if self._draws is None:
            out = dict(self._scalar_draws())
            out["beta"] = self._beta
            out["theta"] = self._theta
            for grp, b in zip(self.design.group_names, self._b):
                out[f"b_{grp}"] = b
            self._draws = out
        return self._draws

    # ------------------------------------------------------------------ summaries
    @property
    def fixef(self) -> pd.Series:
        """Posterior means of the fixed effects."""
        return pd.Series(self._beta.mean(axis=(0, 1)), index=list(self.design.x_names), name="Estimate")

    def ranef(self) -> dict[str, pd.DataFrame]:
        """Posterior means of the random effects, one DataFrame (levels × columns) per term."""
        d = self.design
        return {
            grp: pd.DataFrame(b.mean(axis=(0, 1)), index=t.levels.astype(str), columns=t.column_names)
            for grp, t, b in zip(d.group_names, d.terms, self._b)
        }

    def summary(self) -> pd.DataFrame:
        """mean, sd, q2.5, q97.5, r_hat, ess_bulk per parameter."""
        rows = []
        for name, x in self._scalar_draws().items():
            flat = x.reshape(-1)
            rows.append(dict(parameter=name, mean=flat.mean(), sd=flat.std(ddof=1) if flat.size > 1 else np.nan,
                             **{"q2.5": np.quantile(flat, 0.025), "q97.5": np.quantile(flat, 0.975)},
                             r_hat=split_rhat(x), ess_bulk=ess_bulk(x)))
        return pd.DataFrame(rows).set_index("parameter")

    def __repr__(self) -> str:
        table = self.summary().to_string(float_format=lambda v: f"{v:.4g}")
        return (f"Posterior of {self.design.formula.text} ({self.family}; NUTS, {self.chains} chains × "
                f"{self.n_draws} draws, {self.divergences} divergences)\n{table}")

    def to_dict(self) -> dict[str, Any]:
        table = self.summary()
        clean = table.astype(object).where(np.isfinite(table.to_numpy(dtype=float)), None)
        return dict(
            formula=self.design.formula.text,
            method="nuts",
            family=self.family,
            nobs=int(self.design.n),
            chains=self.chains,
            draws=self.n_draws,
            divergences=self.divergences,
            fixef={k: float(v) for k, v in self.fixef.items()},
            summary={name: row.to_dict() for name, row in clean.iterrows()},
        )

    # ------------------------------------------------------------------ prediction
    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False, type: str = "response", *,
                chunk_size: int | None = None):
        """Predictions for every draw: array chains × draws × rows (response scale, or link with type='link').

        re_form as in ``MixedModelResult.predict``; levels not seen in fitting get zero random effects when
        allow_new_levels=True (lme4's convention), else raise ``NewLevelError``. The draws are worked in chunks
        sized to the available memory (chunk_size= draws per chunk overrides it); a result that cannot fit in
        memory is refused before anything is computed.
        """
        from ..results._results import MixedModelResult

        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        d = self.design
        used = MixedModelResult._terms_for(self, re_form)
        if newdata is None:
            X, zs, codes, offset = d.X, [t.z for t in d.terms], [t.codes for t in d.terms], d.offset
        else:
            X, zs, codes, offset, _ = self.model._new_rows(newdata, used, allow_new_levels)
        c, s, n_rows = self.chains, self.n_draws, X.shape[0]
        check_fits_in_memory(8.0 * c * s * n_rows, f"predict() of {c * s} draws × {n_rows} rows",
                             "predict fewer rows of newdata at a time")
        # per draw: the chunk's η row, and per term the gathered random effects (rows × q) and their product
        per_draw = 8.0 * n_rows * (2 + sum(2 * self._b[k].shape[-1] for k in used))
        size = memory_chunk_size(c * s, per_draw, override=chunk_size)
        beta = self._beta.reshape(c * s, -1)
        out = np.empty((c * s, n_rows))
        for start in range(0, c * s, size):
            sl = slice(start, min(start + size, c * s))
            block = beta[sl] @ X.T + offset[None, :]
            for k in used:
                known = codes[k] >= 0
                b = self._b[k].reshape((c * s,) + self._b[k].shape[2:])[sl]
                block[:, known] += np.einsum("snq,nq->sn", b[:, codes[k][known], :], zs[k][known])
            out[sl] = block if type == "link" else self._response_scale(block)
        return out.reshape(c, s, n_rows)

    def _response_scale(self, eta: np.ndarray) -> np.ndarray:
        if hasattr(self.model.family, "linkinv"):  # the family's own inverse link (R's clamps)
            return np.asarray(self.model.family.linkinv(eta))
        return _inverse_link(eta, self.link)

    # ------------------------------------------------------------------ ArviZ
    def to_arviz(self):
        """An ArviZ InferenceData (posterior and the divergences in sample_stats)."""
        try:
            import arviz as az
        except ImportError as exc:
            raise ImportError("to_arviz needs ArviZ: pip install 'jaxmlm[bayes]' (or pip install arviz)") from exc
        posterior = {k: v for k, v in self.draws.items() if k not in ("beta", "theta")}
        return az.from_dict(posterior=posterior, sample_stats={"diverging": self._diverging})
