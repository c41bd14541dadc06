"""Simulated data sets for examples, benchmarks and tests.

`xbox_poll` draws a poll shaped like Wang, Rothschild, Goel and Gelman's Xbox election survey (2015): 750,148
interviews by default, 93% men and 65% aged 18–29 against a population that is about half men and one fifth
young, classified by eight factors (state 51, age 4, sex 2, race 4, education 4, party 3, ideology 3, 2008 vote 3).
The population frame is their cross-classification (cells with no people dropped), the true outcome probability
of a cell comes from a logistic model with main effects of every factor and state × age and sex × race
interactions, and the poll is aggregated into binomial rows (one per non-empty cell).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = ["XboxPoll", "xbox_poll", "xbox_formula", "XBOX_FACTORS"]

XBOX_FACTORS = {
    "state": [f"S{i:02d}" for i in range(51)],
    "age": ["18-29", "30-44", "45-64", "65+"],
    "sex": ["male", "female"],
    "race": ["white", "black", "hispanic", "other"],
    "education": ["no hs", "high school", "some college", "college"],
    "party": ["democrat", "republican", "other"],
    "ideology": ["liberal", "moderate", "conservative"],
    "vote2008": ["obama", "mccain", "other"],
}
# population shares of each factor's levels (state sizes are drawn)
_POPULATION_SHARES = {
    "age": [0.21, 0.27, 0.34, 0.18],
    "sex": [0.49, 0.51],
    "race": [0.66, 0.12, 0.15, 0.07],
    "education": [0.12, 0.29, 0.29, 0.30],
    "party": [0.35, 0.30, 0.35],
    "ideology": [0.25, 0.40, 0.35],
    "vote2008": [0.43, 0.37, 0.20],
}
# main effects on the logit of the outcome (a two-party vote share); state effects are drawn
_EFFECTS = {
    "age": [0.5, 0.1, -0.2, -0.4],
    "sex": [-0.35, 0.35],
    "race": [-0.35, 1.6, 0.6, 0.2],
    "education": [0.1, -0.15, -0.05, 0.15],
    "party": [1.8, -1.8, 0.0],
    "ideology": [0.7, 0.0, -0.7],
    "vote2008": [1.2, -1.2, 0.0],
}
_POLL_AGE_SHARES = [0.65, 0.22, 0.11, 0.02]


@dataclasses.dataclass
class XboxPoll:
    cells: pd.DataFrame  # the poll as binomial rows: the eight factors, yes, no, n
    population: pd.DataFrame  # one row per population cell: the eight factors, N, p_true
    truth: pd.Series  # per state, Σ N p / Σ N
    raw: pd.Series  # per state, the poll's share of yes


def xbox_formula(interactions: bool = True) -> str:
    """The multilevel model of the paper's shape: an intercept and a scalar term per factor (plus state × age and
    sex × race when `interactions`)."""
    terms = " + ".join(f"(1 | {name})" for name in XBOX_FACTORS)
    if interactions:
        terms += " + (1 | state:age) + (1 | sex:race)"
    return f"cbind(yes, no) ~ 1 + {terms}"


def _population(rng) -> pd.DataFrame:
    names = list(XBOX_FACTORS)
    index = pd.MultiIndex.from_product([XBOX_FACTORS[k] for k in names], names=names)
    frame = index.to_frame(index=False)
    for k in names:
        frame[k] = pd.Categorical(frame[k], categories=XBOX_FACTORS[k])
    codes = {k: frame[k].cat.codes.to_numpy() for k in names}
    state_size = rng.lognormal(np.log(4e6), 0.9, size=len(XBOX_FACTORS["state"]))
    expected = state_size[codes["state"]]
    for k, shares in _POPULATION_SHARES.items():
        expected = expected * np.asarray(shares)[codes[k]]
    # cell-to-cell variation; the thinnest cells come out empty and are dropped
    counts = np.floor(expected * rng.lognormal(0.0, 0.6, size=len(frame)) / 30.0)
    frame["N"] = counts
    return frame, codes


def _true_probability(rng, codes) -> np.ndarray:
    n_states = len(XBOX_FACTORS["state"])
    eta = -0.05 + rng.normal(0.0, 0.35, n_states)[codes["state"]]
    for k, effect in _EFFECTS.items():
        eta = eta + np.asarray(effect)[codes[k]]
    eta = eta + rng.normal(0.0, 0.15, (n_states, 4))[codes["state"], codes["age"]]
    eta = eta + rng.normal(0.0, 0.2, (2, 4))[codes["sex"], codes["race"]]
    return 1.0 / (1.0 + np.exp(-eta))


def _selection(N: np.ndarray, codes, men: float, young: float) -> np.ndarray:
    """Interview probabilities ∝ N × a sex factor × an age factor, raked (iterative proportional fitting) so that
    the poll's expected shares are `men` men and `young` aged 18–29 (the older ages in the paper's proportions)."""
    rest = np.asarray(_POLL_AGE_SHARES[1:]) / sum(_POLL_AGE_SHARES[1:]) * (1.0 - young)
    targets = {"sex": np.array([men, 1.0 - men]), "age": np.concatenate([[young], rest])}
    weight = N.astype(np.float64).copy()
    for _ in range(50):
        for k, target in targets.items():
            share = np.bincount(codes[k], weights=weight, minlength=target.size) / weight.sum()
            weight = weight * (target / share)[codes[k]]
    return weight / weight.sum()


def xbox_poll(n: int = 750_148, seed: int = 0, men: float = 0.93, young: float = 0.65) -> XboxPoll:
    """A simulated Xbox-shaped poll of n interviews and its population (see the module docstring)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of interviews, got {n!r}")
    rng = np.random.default_rng(seed)
    frame, codes = _population(rng)
    p_true = _true_probability(rng, codes)
    keep = frame["N"].to_numpy() > 0
    frame, p_true = frame[keep].reset_index(drop=True), p_true[keep]
    codes = {k: v[keep] for k, v in codes.items()}
    frame["p_true"] = p_true
    interviews = rng.multinomial(n, _selection(frame["N"].to_numpy(), codes, men, young))
    polled = interviews > 0
    yes = rng.binomial(interviews[polled], p_true[polled])
    cells = frame.loc[polled, list(XBOX_FACTORS)].reset_index(drop=True)
    cells["yes"] = yes.astype(np.float64)
    cells["no"] = (interviews[polled] - yes).astype(np.float64)
    cells["n"] = interviews[polled].astype(np.float64)
    weighted = frame.assign(yes=frame["N"] * frame["p_true"]).groupby("state", observed=True)[["yes", "N"]].sum()
    truth = (weighted["yes"] / weighted["N"]).rename("truth")
    by_state = cells.groupby("state", observed=False)[["yes", "n"]].sum()
    raw = (by_state["yes"] / by_state["n"].where(by_state["n"] > 0)).rename("raw poll")
    return XboxPoll(cells=cells, population=frame, truth=truth, raw=raw)
