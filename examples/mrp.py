"""Multilevel regression and post-stratification (MRP) on a synthetic, deliberately skewed poll.

The story follows Wang, Rothschild, Goel and Gelman's Xbox election poll: the respondents are far from a random
sample (young men are heavily over-represented), yet a multilevel model of the response by state, age and sex,
post-stratified to the population's cell counts, recovers each state's true share.

Run:  python examples/mrp.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

import jaxmlm as jm

rng = np.random.default_rng(2012)

# ---------------------------------------------------------------- the population (the "census" frame)
states = [f"S{i:02d}" for i in range(30)]
ages = ["18-29", "30-44", "45-64", "65+"]
sexes = ["female", "male"]
census = pd.MultiIndex.from_product([states, ages, sexes], names=["state", "age", "sex"]).to_frame(index=False)
census["N"] = rng.integers(2_000, 50_000, size=len(census)).astype(float)

state_effect = dict(zip(states, rng.normal(0.0, 0.5, len(states))))
age_effect = dict(zip(ages, [-0.6, -0.2, 0.2, 0.5]))
sex_effect = {"female": -0.25, "male": 0.25}
eta = (
    -0.1
    + census["state"].map(state_effect)
    + census["age"].map(age_effect)
    + census["sex"].map(sex_effect)
)
census["p_true"] = 1.0 / (1.0 + np.exp(-eta))

truth = (
    census.assign(yes=census["N"] * census["p_true"])
    .groupby("state")[["yes", "N"]]
    .sum()
    .pipe(lambda g: g["yes"] / g["N"])
    .rename("truth")
)

# ---------------------------------------------------------------- a skewed poll of 4000 respondents
skew = census["age"].map({"18-29": 6.0, "30-44": 3.0, "45-64": 1.0, "65+": 0.4}) * census["sex"].map(
    {"female": 0.35, "male": 1.0}
)
chance = census["N"] * skew
cell = rng.choice(len(census), size=4000, p=chance / chance.sum())
answer = rng.random(cell.size) < census["p_true"].to_numpy()[cell]
poll = census.loc[cell, ["state", "age", "sex"]].assign(yes=answer.astype(int)).reset_index(drop=True)

# cells of the poll (binomial counts): the model sees successes and failures per state × age × sex; age and sex as fixed effects (few levels)
cells = poll.groupby(["state", "age", "sex"], observed=True)["yes"].agg(["sum", "count"]).reset_index()
cells = cells.rename(columns={"sum": "yes", "count": "n"}).assign(no=lambda d: d["n"] - d["yes"])

formula = "cbind(yes, no) ~ sex + age + (1 | state)"

# ---------------------------------------------------------------- fit, post-stratify, compare
start = time.perf_counter()
fit = jm.glmer(formula, cells, family="binomial")
mrp = jm.poststratify(fit, census, weight="N", by=["state"], draws=2000, seed=1)
t_fit = time.perf_counter() - start

start = time.perf_counter()
post = jm.Model(formula, cells, family="binomial").sample(chains=2, draws=400, warmup=400, seed=1)
mrp_bayes = jm.poststratify(post, census, weight="N", by=["state"])
t_bayes = time.perf_counter() - start

raw = poll.groupby("state")["yes"].mean().rename("raw poll")
table = (
    pd.DataFrame({"truth": truth, "raw poll": raw})
    .join(mrp.set_index("state")[["estimate", "lower", "upper"]].add_prefix("glmer "))
    .join(mrp_bayes.set_index("state")[["estimate", "lower", "upper"]].add_prefix("nuts "))
)
pd.set_option("display.width", 140)
print(fit.summary())
print()
print(post.summary().round(3))
print()
print(table.round(3).to_string())
print()
for col in ["raw poll", "glmer estimate", "nuts estimate"]:
    err = (table[col] - table["truth"]).abs()
    print(f"{col:>15}: mean absolute error {err.mean():.3f}, worst {err.max():.3f}")
for name in ["glmer", "nuts"]:
    covered = ((table[f"{name} lower"] <= table["truth"]) & (table["truth"] <= table[f"{name} upper"])).mean()
    print(f"{name:>15}: 95% intervals cover the truth in {covered:.0%} of states")
overall_truth = float((census["N"] * census["p_true"]).sum() / census["N"].sum())
overall = jm.poststratify(post, census, weight="N", by=None)
print(f"\nnational share: truth {overall_truth:.3f}, raw poll {poll['yes'].mean():.3f}, "
      f"MRP {overall['estimate'].iloc[0]:.3f} [{overall['lower'].iloc[0]:.3f}, {overall['upper'].iloc[0]:.3f}]")
print(f"\ntimes: glmer + post-stratification {t_fit:.1f} s, NUTS (2 × 400 draws) + post-stratification {t_bayes:.1f} s")
