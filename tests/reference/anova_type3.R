# lmerTest 3.1-3 (lme4 1.1-31, pbkrtest 0.5.2): anova(fit, type = 3) and anova(fit, type = 1) F tables with
# Satterthwaite's and Kenward-Roger's denominator df. Run from this folder: Rscript anova_type3.R
# (writes anova_type3.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages(library(lmerTest))
table <- function(fit, type, ddf) {
  tab <- anova(fit, type = type, ddf = ddf)
  list(type = type, ddf = ddf, rows = rownames(tab), sum_sq = unname(tab[, "Sum Sq"]),
       mean_sq = unname(tab[, "Mean Sq"]), num_df = unname(tab[, "NumDF"]), den_df = unname(tab[, "DenDF"]),
       f = unname(tab[, "F value"]), p = unname(tab[, "Pr(>F)"]))
}
case <- function(formula, dataset) {
  fit <- lmerTest::lmer(as.formula(formula), load_data(dataset))
  list(formula = formula, dataset = dataset, reml = TRUE,
       tables = list(table(fit, 3, "Satterthwaite"), table(fit, 1, "Satterthwaite"),
                     table(fit, 3, "Kenward-Roger"), table(fit, 1, "Kenward-Roger")))
}
out <- list()
out$contraception <- case("age ~ urban * livch + (1 | district)", "Contraception")
out$grouseticks <- case("log(1 + TICKS) ~ YEAR * cHEIGHT + (1 | LOCATION) + (1 | BROOD)", "grouseticks")
out$sleepstudy <- case("Reaction ~ Days + (Days | Subject)", "sleepstudy")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "anova_type3.json")
