# lme4 1.1-31 profile-likelihood intervals of GLMMs (confint(fit), its default method), at the exact Laplace /
# nAGQ optimum (tight PIRLS and optimizer tolerances, as glmm_extra.R). lme4 interpolates the profile with splines,
# so its endpoints carry ~1e-4 relative error. Run from this folder: Rscript confint_glmm.R  (writes
# lme4_confint_glmm.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
tight <- glmerControl(tolPwrss = 1e-13, optimizer = "nloptwrap",
                      optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15, maxeval = 20000))
intervals <- function(fit, formula, dataset, family, nagq = 1) {
  ci <- suppressMessages(confint(fit))
  list(formula = formula, dataset = dataset, family = family, nagq = nagq, level = 0.95,
       rows = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
}
out <- list()
cbpp <- load_data("cbpp")
fb <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
out$cbpp_laplace <- intervals(glmer(as.formula(fb), cbpp, binomial, control = tight), fb, "cbpp", "binomial")
out$cbpp_agq9 <- intervals(glmer(as.formula(fb), cbpp, binomial, nAGQ = 9, control = tight), fb, "cbpp",
                           "binomial", 9)
gt <- load_data("grouseticks")
fg <- "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"
out$grouseticks_poisson <- intervals(glmer(as.formula(fg), gt, poisson, control = tight), fg, "grouseticks",
                                     "poisson")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_confint_glmm.json")
