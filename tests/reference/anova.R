# lme4 1.1-31 anova(): likelihood-ratio tables of nested models (REML fits refitted with ML, as anova's default
# refit = TRUE does) and the single-model sequential F tables.
# Run from this folder: Rscript anova.R  (writes lme4_anova.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
table_of <- function(a) {
  a <- as.data.frame(a)
  c(list(rows = rownames(a)), lapply(as.list(a), function(col) unname(col)))
}
out <- list()
ss <- load_data("sleepstudy")
fm0 <- lmer(Reaction ~ Days + (1 | Subject), ss)
fm1 <- lmer(Reaction ~ Days + (Days | Subject), ss)
fm2 <- lmer(Reaction ~ 1 + (Days | Subject), ss)
out$sleepstudy_lrt <- list(dataset = "sleepstudy", reml = TRUE,
  formulas = c("Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)",
               "Reaction ~ 1 + (Days | Subject)"),
  names = c("fm0", "fm1", "fm2"), table = table_of(suppressMessages(anova(fm0, fm1, fm2))))
out$sleepstudy_lrt_no_refit <- list(dataset = "sleepstudy", reml = TRUE,
  formulas = c("Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"),
  names = c("fm0", "fm1"), table = table_of(anova(fm0, fm1, refit = FALSE)))
gt <- load_data("grouseticks")
ft <- "log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)"
out$grouseticks_f <- list(dataset = "grouseticks", reml = TRUE, formula = ft,
  table = table_of(anova(lmer(as.formula(ft), gt))))
cbpp <- load_data("cbpp")
gm0 <- glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), cbpp, binomial)
gm1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)
out$cbpp_lrt <- list(dataset = "cbpp", family = "binomial",
  formulas = c("cbind(incidence, size - incidence) ~ 1 + (1 | herd)",
               "cbind(incidence, size - incidence) ~ period + (1 | herd)"),
  names = c("gm0", "gm1"), table = table_of(anova(gm1, gm0)))
out$cbpp_f <- list(dataset = "cbpp", family = "binomial",
  formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)", table = table_of(anova(gm1)))
# drop1(): single-term deletions (refitted by ML), respecting marginality
out$sleepstudy_drop1 <- list(dataset = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", reml = TRUE,
  table = table_of(drop1(fm1, test = "Chisq")))
fi <- "log(1 + TICKS) ~ YEAR * cHEIGHT + (1 | LOCATION) + (1 | BROOD)"
out$grouseticks_drop1 <- list(dataset = "grouseticks", formula = fi, reml = TRUE,
  table = table_of(drop1(lmer(as.formula(fi), gt), test = "Chisq")))
out$cbpp_drop1 <- list(dataset = "cbpp", family = "binomial",
  formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)", table = table_of(drop1(gm1, test = "Chisq")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE), "lme4_anova.json")
