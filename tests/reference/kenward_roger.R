# pbkrtest 0.5.2 (lme4 1.1-31, lmerTest 3.1-3): the Kenward-Roger adjusted covariance of the fixed effects
# (vcovAdj) and lmerTest's t-tests with Kenward-Roger df (summary(fit, ddf = "Kenward-Roger")) for REML fits.
# Run from this folder: Rscript kenward_roger.R  (writes kenward_roger.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages({library(lmerTest); library(pbkrtest)})
case <- function(formula, dataset) {
  fit <- lmerTest::lmer(as.formula(formula), load_data(dataset))
  tab <- coef(summary(fit, ddf = "Kenward-Roger"))
  adj <- as.matrix(vcovAdj(as(fit, "lmerMod")))
  list(formula = formula, dataset = dataset, reml = TRUE, rows = rownames(tab),
       estimate = unname(tab[, "Estimate"]), se = unname(tab[, "Std. Error"]), df = unname(tab[, "df"]),
       t = unname(tab[, "t value"]), p = unname(tab[, "Pr(>|t|)"]), vcov_adjusted = unname(adj),
       vcov = unname(as.matrix(vcov(fit))))
}
out <- list()
out$sleepstudy <- case("Reaction ~ Days + (Days | Subject)", "sleepstudy")
out$grouseticks <- case("log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)", "grouseticks")
out$contraception <- case("age ~ urban + livch + (urban | district)", "Contraception")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "kenward_roger.json")
