# lmerTest 3.1-3 (on lme4 1.1-31): t-tests of the fixed effects with Satterthwaite's degrees of freedom, as
# summary() of an lmerTest fit prints them. Run from this folder: Rscript satterthwaite.R  (writes
# lme4_satterthwaite.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages(library(lmerTest))
coefs <- function(fit, formula, dataset, reml) {
  tab <- coef(summary(fit))
  printed <- capture.output(print(summary(fit)))
  first <- which(printed == "Fixed effects:") + 1
  list(formula = formula, dataset = dataset, reml = reml, rows = rownames(tab),
       estimate = unname(tab[, "Estimate"]), se = unname(tab[, "Std. Error"]), df = unname(tab[, "df"]),
       t = unname(tab[, "t value"]), p = unname(tab[, "Pr(>|t|)"]),
       table_text = printed[first:(first + nrow(tab))])  # the printed header and rows
}
out <- list()
ss <- load_data("sleepstudy")
fs <- "Reaction ~ Days + (Days | Subject)"
out$sleepstudy_reml <- coefs(lmerTest::lmer(as.formula(fs), ss), fs, "sleepstudy", TRUE)
out$sleepstudy_ml <- coefs(lmerTest::lmer(as.formula(fs), ss, REML = FALSE), fs, "sleepstudy", FALSE)
gt <- load_data("grouseticks")
fg <- "log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)"
out$grouseticks_reml <- coefs(lmerTest::lmer(as.formula(fg), gt), fg, "grouseticks", TRUE)
con <- load_data("Contraception")
fc <- "age ~ urban + livch + (urban | district)"
out$contraception_reml <- coefs(lmerTest::lmer(as.formula(fc), con), fc, "Contraception", TRUE)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_satterthwaite.json")
