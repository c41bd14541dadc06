# emmeans 1.8.4-1 (lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2): estimated marginal means on emmeans' reference
# grid and their pairwise contrasts, for linear models (Satterthwaite and Kenward-Roger df) and a binomial GLMM
# (link and response scale). Run from this folder: Rscript emmeans.R  (writes emmeans.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages({library(emmeans); library(lmerTest)})
frame <- function(x) { d <- as.data.frame(x); for (n in names(d)) if (is.factor(d[[n]])) d[[n]] <- as.character(d[[n]]); d }
case <- function(fit, formula, dataset, family, reml, specs, by = NULL, df = NULL, type = "link") {
  args <- list(fit, specs = specs, by = by, type = type)
  if (!is.null(df)) args$lmer.df <- df
  emm <- do.call(emmeans, args)
  out <- list(formula = formula, dataset = dataset, family = family, reml = reml, specs = specs, by = by,
              lmer_df = df, type = type, emmeans = frame(summary(emm, infer = c(TRUE, FALSE))))
  for (adj in c("tukey", "bonferroni", "holm", "none"))
    out$contrasts[[adj]] <- frame(summary(pairs(emm, adjust = adj), infer = c(FALSE, TRUE)))
  out
}
out <- list()
con <- load_data("Contraception")
f1 <- "age ~ urban * livch + (1 | district)"
m1 <- lmer(as.formula(f1), con)
out$contraception_livch_sat <- case(m1, f1, "Contraception", "gaussian", TRUE, "livch", df = "satterthwaite")
out$contraception_livch_kr <- case(m1, f1, "Contraception", "gaussian", TRUE, "livch", df = "kenward-roger")
out$contraception_livch_by_urban <- case(m1, f1, "Contraception", "gaussian", TRUE, "livch", by = "urban",
                                         df = "satterthwaite")
gt <- load_data("grouseticks")
f2 <- "log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)"
m2 <- lmer(as.formula(f2), gt)
out$grouseticks_year_sat <- case(m2, f2, "grouseticks", "gaussian", TRUE, "YEAR", df = "satterthwaite")
cb <- load_data("cbpp")
f3 <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
m3 <- glmer(as.formula(f3), cb, family = binomial)
out$cbpp_period_link <- case(m3, f3, "cbpp", "binomial", FALSE, "period")
out$cbpp_period_response <- case(m3, f3, "cbpp", "binomial", FALSE, "period", type = "response")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), "emmeans.json")
