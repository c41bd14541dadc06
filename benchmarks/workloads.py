"""Benchmark workloads: formula, data (real or synthetic, deterministic from a seed) and which engines apply.

Synthetic designs draw every parameter from fixed values so that every engine sees the same rows; group sizes
are Poisson around the mean (or heavy-tailed for the MovieLens-shaped design, whose users and items follow
Zipf-like counts as real ratings do).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = ["Workload", "WORKLOADS", "make_data"]


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    formula: str
    method: str  # "ml" | "reml" | "laplace"
    description: str
    rows: int
    family: str = "gaussian"
    peers: tuple[str, ...] = ("lme4", "glmmTMB", "mixedlm", "statsmodels")
    accelerator_only: bool = False
    quick: bool = False  # part of --quick
    peer_timeout_s: float = 1800.0
    solver: str = "direct"  # jaxmlm's solver: "iterative" where the dense tail cannot be held


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("sleepstudy", "Reaction ~ Days + (Days | Subject)", "ml", "sleepstudy, 180 rows × 18 subjects",
                 180, quick=True),
        Workload("insteval", "y ~ service + (1 | s) + (1 | d) + (1 | dept)", "ml",
                 "InstEval, 73k rows, crossed s × d × dept (1128 + 14 dense tail columns)", 73421,
                 peers=("lme4", "glmmTMB", "mixedlm"), quick=True),
        Workload("ri_1m_5k", "y ~ x + (1 | g)", "ml", "synthetic 1M rows × 5k groups, random intercept", 1_000_000,
                 quick=True),
        Workload("slope_1m_100k", "y ~ x + (x | g)", "ml", "synthetic 1M rows × 100k groups, intercept + slope",
                 1_000_000, peers=("lme4", "glmmTMB", "mixedlm")),
        Workload("slope_10m_1m", "y ~ x + (x | g)", "ml", "synthetic 10M rows × 1M groups, intercept + slope",
                 10_000_000, peers=()),
        Workload("logit_1m_10k", "y ~ x + (1 | g)", "laplace", "synthetic 1M rows × 10k groups, logistic GLMM",
                 1_000_000, family="binomial", peers=("lme4", "glmmTMB", "mixedlm")),
        Workload("ml32m_crossed", "rating ~ 1 + (1 | user) + (1 | item)", "ml",
                 "MovieLens ml-32m shape: 32M ratings, 200k users × 84k items, heavy-tailed counts", 32_000_000,
                 peers=(), accelerator_only=True, solver="iterative"),
    ]
}


def _synthetic(n: int, n_groups: int, slope: bool, binary: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, size=n, dtype=np.int32)
    x = rng.standard_normal(n)
    b0 = rng.standard_normal(n_groups) * 0.8
    eta = 1.0 + 0.5 * x + b0[g]
    if slope:
        b1 = 0.3 * b0 + rng.standard_normal(n_groups) * 0.4
        eta = eta + b1[g] * x
    if binary:
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(eta - 1.0)))).astype(np.float64)
    else:
        y = eta + rng.standard_normal(n)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical.from_codes(g, categories=np.arange(n_groups))})


def _movielens_like(n: int, n_users: int, n_items: int, seed: int) -> pd.DataFrame:
    """Heavy-tailed users and items (Zipf-like popularity), as in real ratings data."""
    rng = np.random.default_rng(seed)
    pu = 1.0 / np.arange(1, n_users + 1) ** 0.6
    pi = 1.0 / np.arange(1, n_items + 1) ** 0.9
    user = rng.choice(n_users, size=n, p=pu / pu.sum()).astype(np.int32)
    item = rng.choice(n_items, size=n, p=pi / pi.sum()).astype(np.int32)
    rating = 3.5 + 0.5 * rng.standard_normal(n_users)[user] + 0.4 * rng.standard_normal(n_items)[item]
    rating = rating + 0.9 * rng.standard_normal(n)
    return pd.DataFrame({"rating": rating, "user": pd.Categorical(user), "item": pd.Categorical(item)})


def make_data(name: str, seed: int = 1) -> pd.DataFrame:
    """The workload's data frame (grouping factors as pandas categoricals)."""
    if name == "sleepstudy":
        import jaxmlm

        return jaxmlm.datasets.load("sleepstudy")
    if name == "insteval":
        import jaxmlm

        return jaxmlm.datasets.load("InstEval")
    if name == "ri_1m_5k":
        return _synthetic(1_000_000, 5_000, slope=False, binary=False, seed=seed)
    if name == "slope_1m_100k":
        return _synthetic(1_000_000, 100_000, slope=True, binary=False, seed=seed)
    if name == "slope_10m_1m":
        return _synthetic(10_000_000, 1_000_000, slope=True, binary=False, seed=seed)
    if name == "logit_1m_10k":
        return _synthetic(1_000_000, 10_000, slope=False, binary=True, seed=seed)
    if name == "ml32m_crossed":
        return _movielens_like(32_000_000, 200_948, 84_432, seed=seed)
    raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
