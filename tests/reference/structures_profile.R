# glmmTMB's profile-likelihood intervals (uniroot on the profile, the internal parameters: log sd and the
# correlation transform) for the ar1() Gaussian fit of covstruct.R; written to structures_profile.json.
# Run from this folder: Rscript structures_profile.R
suppressMessages({library(glmmTMB); library(jsonlite)})
d <- read.csv("covstruct_ar1.csv", stringsAsFactors = FALSE)
d$g <- factor(d$g); d$ftime <- factor(d$time, levels = 1:4)
fit <- glmmTMB(y ~ time + ar1(0 + ftime | g), data = d, REML = FALSE)
ci <- confint(fit, method = "uniroot", parm = "theta_", estimate = TRUE)
ci_beta <- confint(fit, method = "uniroot", parm = "beta_", estimate = TRUE)
ci_sigma <- confint(fit, method = "uniroot", parm = "disp_", estimate = TRUE)
out <- list(ar1_gaussian = list(
  formula = "y ~ time + ar1(0 + ftime | g)", data = "covstruct_ar1.csv", level = 0.95,
  theta = list(rows = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]), estimate = unname(ci[, 3])),
  beta = list(rows = rownames(ci_beta), lower = unname(ci_beta[, 1]), upper = unname(ci_beta[, 2]),
              estimate = unname(ci_beta[, 3])),
  disp = list(rows = rownames(ci_sigma), lower = unname(ci_sigma[, 1]), upper = unname(ci_sigma[, 2]),
              estimate = unname(ci_sigma[, 3]))),
  meta = list(R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB"))))
print(ci); print(ci_beta); print(ci_sigma)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "structures_profile.json")
