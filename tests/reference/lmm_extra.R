# lme4 reference numbers for linear mixed models beyond the public cases: the rest of the formula language
# ((0 + x | g), (x || g), (1 | a:b), (1 | a/b) by ML, crossed ML, I(), factor interactions, several crossed
# terms, offset(), weights, ordered factors with contr.poly). Run from the repository root:
#   Rscript tests/reference/lmm_extra.R
# It writes tests/reference/lme4_lmm_extra.json. Synthetic data sets are generated here with a fixed seed and
# stored in the JSON ("data"), so the tests need no R.
suppressMessages({
  library(lme4)
  library(jsonlite)
})

read_dataset <- function(name) {
  # lme4's own copies: the data jaxmlm bundles under jaxmlm/datasets/data was written from these
  get(name, envir = asNamespace("lme4"))
}

set.seed(20240611)
n <- 144
synth_crossed <- data.frame(
  A = factor(sample(c("a1", "a2", "a3"), n, replace = TRUE)),
  B = factor(sample(c("b1", "b2"), n, replace = TRUE)),
  x = round(rnorm(n), 4),
  g = factor(sprintf("g%02d", sample(1:12, n, replace = TRUE))),
  h = factor(sprintf("h%02d", sample(1:8, n, replace = TRUE))),
  k = factor(sprintf("k%02d", sample(1:5, n, replace = TRUE)))
)
eff <- function(f, s) rnorm(nlevels(f), sd = s)[as.integer(f)]
synth_crossed$y <- round(
  2 + 0.5 * (synth_crossed$A == "a2") - 0.7 * (synth_crossed$A == "a3") + 0.4 * (synth_crossed$B == "b2") +
    0.6 * (synth_crossed$A == "a3") * (synth_crossed$B == "b2") + 0.8 * synth_crossed$x +
    eff(synth_crossed$g, 1.0) + eff(synth_crossed$h, 0.6) + eff(synth_crossed$k, 0.4) + rnorm(n, sd = 0.8),
  4
)

m <- 160
synth_weighted <- data.frame(
  g = factor(sprintf("s%02d", rep(1:16, each = 10))),
  x = round(runif(m, 0, 4), 4),
  expo = round(runif(m, 0.5, 3), 4),
  w = round(runif(m, 0.25, 4), 4)
)
gi <- as.integer(synth_weighted$g)
synth_weighted$y <- round(
  1 + 0.3 * synth_weighted$x + log(synth_weighted$expo) + rnorm(16, sd = 0.9)[gi] +
    rnorm(16, sd = 0.3)[gi] * synth_weighted$x + rnorm(m, sd = 0.7) / sqrt(synth_weighted$w),
  4
)

# an ordered factor (levels not in alphabetical order): R's default contrasts give it contr.poly
o <- 120
synth_ordered <- data.frame(
  g = factor(sprintf("c%02d", rep(1:12, each = 10))),
  dose = factor(sample(c("low", "mid", "high", "max"), o, replace = TRUE),
                levels = c("low", "mid", "high", "max"), ordered = TRUE),
  x = round(rnorm(o), 4)
)
synth_ordered$y <- round(
  3 + c(0, 0.4, 1.1, 1.3)[as.integer(synth_ordered$dose)] + 0.5 * synth_ordered$x +
    rnorm(12, sd = 0.8)[as.integer(synth_ordered$g)] + rnorm(o, sd = 0.6),
  4
)

cases <- list(
  sleepstudy_slope_only_reml = list(data = "sleepstudy", formula = "Reaction ~ Days + (0 + Days | Subject)", reml = TRUE),
  sleepstudy_uncorr_ml = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days || Subject)", reml = FALSE),
  sleepstudy_quadratic_reml = list(
    data = "sleepstudy", formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)", reml = TRUE
  ),
  pastes_interaction_reml = list(data = "Pastes", formula = "strength ~ 1 + (1 | batch:cask)", reml = TRUE),
  pastes_nested_ml = list(data = "Pastes", formula = "strength ~ 1 + (1 | batch/cask)", reml = FALSE),
  penicillin_crossed_ml = list(data = "Penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = FALSE),
  synth_factor_interaction_three_crossed_reml = list(
    data = "synth_crossed", formula = "y ~ A * B + x + (1 | g) + (1 | h) + (1 | k)", reml = TRUE
  ),
  synth_offset_weights_slope_reml = list(
    data = "synth_weighted", formula = "y ~ x + offset(log(expo)) + (x | g)", reml = TRUE, weights = "w"
  ),
  synth_ordered_poly_reml = list(data = "synth_ordered", formula = "y ~ dose + x + (1 | g)", reml = TRUE),
  synth_ordered_poly_interaction_ml = list(data = "synth_ordered", formula = "y ~ dose * x + (1 | g)", reml = FALSE),
  synth_offset_weights_slope_ml = list(
    data = "synth_weighted", formula = "y ~ x + offset(log(expo)) + (x | g)", reml = FALSE, weights = "w"
  )
)

frames <- list(synth_crossed = synth_crossed, synth_weighted = synth_weighted, synth_ordered = synth_ordered)
get_data <- function(name) if (!is.null(frames[[name]])) frames[[name]] else read_dataset(name)

fit_case <- function(case) {
  data <- get_data(case$data)
  t0 <- proc.time()[["elapsed"]]
  if (is.null(case$weights)) {
    fit <- lmer(as.formula(case$formula), data = data, REML = case$reml)
  } else {
    data$.w <- data[[case$weights]]
    fit <- lmer(as.formula(case$formula), data = data, REML = case$reml, weights = .w)
  }
  seconds <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(fit))
  ll <- logLik(fit)
  list(
    formula = case$formula, family = "gaussian", link = "identity", reml = case$reml, nagq = NULL,
    data = case$data, weights = if (is.null(case$weights)) NULL else case$weights,
    nobs = nobs(fit), ngrps = as.list(ngrps(fit)),
    objective = if (case$reml) REMLcrit(fit) else deviance(fit),
    loglik = as.numeric(ll), aic = AIC(fit), bic = BIC(fit),
    theta = unname(getME(fit, "theta")),
    fixef = as.list(fixef(fit)), se = as.list(sqrt(diag(as.matrix(vcov(fit))))),
    sigma = sigma(fit),
    varcorr = lapply(seq_len(nrow(vc)), function(i) list(
      grp = vc$grp[i], var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i],
      var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i], vcov = vc$vcov[i], sdcor = vc$sdcor[i]
    )),
    singular = isSingular(fit), seconds = seconds
  )
}

out <- lapply(cases, fit_case)
names(out) <- names(cases)
out$`_data` <- lapply(frames, function(f) lapply(f, function(col) if (is.factor(col)) as.character(col) else col))
ordered_levels <- function(f) lapply(Filter(is.ordered, f), levels)
out$`_ordered` <- Filter(length, lapply(frames, ordered_levels))
out$`_meta` <- list(lme4 = as.character(packageVersion("lme4")), R = R.version.string)
writeLines(
  toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE),
  "tests/reference/lme4_lmm_extra.json"
)
