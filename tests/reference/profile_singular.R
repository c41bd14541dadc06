# lme4 1.1-31 profile intervals of singular fits (a variance estimated as 0): Dyestuff2 (lme4's own example of a
# singular fit) by ML and by REML (both profile the ML deviance). lme4 interpolates the profile with splines, so
# its endpoints carry ~1e-4 relative error. Run from this folder: Rscript profile_singular.R
# (writes lme4_profile_singular.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
intervals <- function(fit, formula) {
  ci <- suppressMessages(confint(fit))
  list(formula = formula, dataset = "Dyestuff2", theta = unname(getME(fit, "theta")), level = 0.95,
       rows = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
}
d2 <- load_data("Dyestuff2")
f <- "Yield ~ 1 + (1 | Batch)"
out <- list(
  dyestuff2_ml = intervals(suppressMessages(lmer(as.formula(f), d2, REML = FALSE)), f),
  dyestuff2_reml = intervals(suppressMessages(lmer(as.formula(f), d2)), f)
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_profile_singular.json")
