"""Fit lme4's classic sleepstudy model and print the summary, as `summary(lmer(...))` does in R."""

import jaxmlm as jm

sleepstudy = jm.datasets.load("sleepstudy")
fit = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
print(fit.summary())
print()
print("theta:", fit.theta)
print(f"optimizer: {fit.optinfo.n_iter} L-BFGS iterations, {fit.optinfo.n_eval} evaluations, "
      f"max|grad| = {fit.optinfo.grad_max:.2e}")
