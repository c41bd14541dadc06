"""Engine adapters: each fits one workload and returns its objective (-2 log-likelihood for ML and Laplace fits).

Every adapter runs inside its own child process (see run.py), so its first fit includes imports' warm-up and
compiling, and the process's peak resident memory is the engine's alone. lme4 and glmmTMB run through Rscript on
a CSV that the parent writes once; the R time covers only the fit call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

__all__ = ["available_engines", "python_fit", "r_script", "r_available"]


def r_available() -> bool:
    return shutil.which("Rscript") is not None


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def available_engines() -> list[str]:
    engines = ["jaxmlm"]
    if r_available():
        ok = subprocess.run(["Rscript", "-e", "library(lme4); library(glmmTMB)"], capture_output=True).returncode == 0
        if ok:
            engines += ["lme4", "glmmTMB"]
    engines += [e for e in ("mixedlm", "statsmodels") if _importable(e)]
    return engines


def python_fit(engine: str, workload, data, dtype: str | None = None):
    """One fit; returns (objective, details dict). The caller times it."""
    if engine == "jaxmlm":
        import jaxmlm as jm

        model = jm.Model(workload.formula, data, family=workload.family)
        options = {} if workload.solver == "direct" else dict(solver=workload.solver)
        fit = model.fit(method=workload.method, warn=False, **options)
        info = fit.optinfo
        return float(fit.objective), dict(n_eval=int(info.n_eval), n_iter=int(info.n_iter),
                                          converged=bool(info.converged), theta=[float(t) for t in fit.theta])
    if engine == "mixedlm":
        import mixedlm

        if workload.family == "gaussian":
            r = mixedlm.lmer(workload.formula, data, REML=workload.method == "reml")
            return float(r.deviance), dict(theta=[float(t) for t in r.theta])
        r = mixedlm.glmer(workload.formula, data, family=mixedlm.families.Binomial())
        return float(-2.0 * r.logLik()), {}
    if engine == "statsmodels":
        import statsmodels.formula.api as smf

        fixed, group, re_formula = _statsmodels_parts(workload.formula)
        model = smf.mixedlm(fixed, data, groups=data[group], re_formula=re_formula)
        r = model.fit(reml=workload.method == "reml", method=["lbfgs"])
        return float(-2.0 * r.llf), {}
    raise ValueError(f"no Python adapter for {engine!r}")


def _statsmodels_parts(formula: str):
    """'y ~ x + (x | g)' → ('y ~ x', 'g', '~x'); statsmodels fits one grouping factor only."""
    lhs, rhs = formula.split("~", 1)
    terms = [t.strip() for t in rhs.split("+")]
    fixed = [t for t in terms if not t.startswith("(") and not t.endswith(")")]
    random = [t for t in rhs.split("(")[1:]]
    if len(random) != 1:
        raise ValueError("statsmodels MixedLM fits one grouping factor")
    re_lhs, group = [s.strip(" )+") for s in random[0].split("|")]
    return f"{lhs.strip()} ~ {' + '.join(fixed) or '1'}", group, f"~{re_lhs}" if re_lhs != "1" else None


def supports(engine: str, workload) -> bool:
    if engine == "jaxmlm":
        return True
    if engine not in workload.peers:
        return False
    if engine == "statsmodels":
        return workload.family == "gaussian" and workload.formula.count("|") == 1
    return True


# warm time: the median (lower middle) of up to WARM_REPEATS fits after the first, while they total under the budget
WARM_REPEATS = 3
WARM_BUDGET_S = 60.0

R_TEMPLATE = r"""
suppressMessages({library(lme4); library(glmmTMB); library(data.table)})
args <- commandArgs(trailingOnly = TRUE)
d <- as.data.frame(fread(args[1]))
for (v in strsplit(args[5], ",")[[1]]) if (nchar(v)) d[[v]] <- factor(d[[v]])
form <- as.formula(args[2]); engine <- args[3]; method <- args[4]
fit_once <- function() {
  if (engine == "lme4") {
    if (method == "laplace") glmer(form, d, family = binomial) else lmer(form, d, REML = method == "reml")
  } else {
    if (method == "laplace") glmmTMB(form, d, family = binomial) else glmmTMB(form, d, REML = method == "reml")
  }
}
t0 <- Sys.time(); f1 <- fit_once(); t1 <- Sys.time()
warm <- c()
repeat {  # the median of up to 3 repeat fits while they total under 60 s, as for the Python engines
  t <- Sys.time(); fit_once(); warm <- c(warm, as.numeric(Sys.time() - t, units = "secs"))
  if (length(warm) >= 3 || sum(warm) >= 60) break
}
obj <- if (engine == "lme4" && method == "reml") REMLcrit(f1) else -2 * as.numeric(logLik(f1))
cat(sprintf('{"objective": %.12f, "cold_s": %.6f, "warm_s": %.6f}\n', obj,
            as.numeric(t1 - t0, units = "secs"), sort(warm)[(length(warm) + 1) %/% 2]),
    file = args[6])
"""


def r_script() -> str:
    return R_TEMPLATE


def r_versions() -> dict:
    if not r_available():
        return {}
    code = 'cat(R.version$major, ".", R.version$minor, " ", as.character(packageVersion("lme4")), " ", ' \
           'as.character(packageVersion("glmmTMB")), sep="")'
    out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True).stdout.split()
    return dict(zip(["R", "lme4", "glmmTMB"], out)) if len(out) == 3 else {}


def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
