# lme4 1.1-31 residuals() of GLMMs, every type, at the exact Laplace optimum (tight PIRLS and optimizer
# tolerances, as glmm_extra.R). Run from this folder: Rscript residuals.R  (writes lme4_residuals.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
tight <- glmerControl(tolPwrss = 1e-13, optimizer = "nloptwrap",
                      optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15, maxeval = 20000))
all_types <- function(fit, formula, family) {
  list(formula = formula, dataset = "cbpp", family = family,
       default = unname(residuals(fit)),
       response = unname(residuals(fit, type = "response")),
       pearson = unname(residuals(fit, type = "pearson")),
       deviance = unname(residuals(fit, type = "deviance")),
       working = unname(residuals(fit, type = "working")))
}
cbpp <- load_data("cbpp")
out <- list()
fb <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
out$cbpp_binomial <- all_types(glmer(as.formula(fb), cbpp, binomial, control = tight), fb, "binomial")
fp <- "incidence ~ period + offset(log(size)) + (1 | herd)"
out$cbpp_poisson <- all_types(glmer(as.formula(fp), cbpp, poisson, control = tight), fp, "poisson")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_residuals.json")
