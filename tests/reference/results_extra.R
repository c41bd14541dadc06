# lme4 1.1-31 numbers for the results layer: conditional modes and their conditional SDs (ranef condVar),
# coef(), predictions with and without random effects, and new-level predictions.
# Run from this folder: Rscript results_extra.R  (writes lme4_results_extra.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
ranef_long <- function(fit) {
  r <- as.data.frame(ranef(fit, condVar = TRUE))
  list(grpvar = as.character(r$grpvar), term = as.character(r$term), grp = as.character(r$grp),
       condval = r$condval, condsd = r$condsd)
}
out <- list()
ss <- load_data("sleepstudy")
f1 <- lmer(Reaction ~ Days + (Days | Subject), ss)
nd <- data.frame(Days = c(0, 5, 9), Subject = factor(c("308", "309", "999")))
out$sleepstudy_reml <- list(
  formula = "Reaction ~ Days + (Days | Subject)", dataset = "sleepstudy", reml = TRUE,
  ranef = ranef_long(f1),
  coef = lapply(as.list(coef(f1)$Subject), unname),
  fitted_head = unname(head(fitted(f1), 5)),
  newdata = list(Days = nd$Days, Subject = as.character(nd$Subject)),
  predict_new_levels = unname(predict(f1, newdata = nd, allow.new.levels = TRUE)),
  predict_population = unname(predict(f1, newdata = nd, re.form = NA))
)
pen <- load_data("Penicillin")
f2 <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen)
out$penicillin_reml <- list(formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", dataset = "Penicillin", reml = TRUE,
                            ranef = ranef_long(f2))
pas <- load_data("Pastes")
f3 <- lmer(strength ~ 1 + (1 | batch/cask), pas)
out$pastes_reml <- list(formula = "strength ~ 1 + (1 | batch/cask)", dataset = "Pastes", reml = TRUE,
                        ranef = ranef_long(f3))
f4 <- lmer(Reaction ~ Days + (Days || Subject), ss, REML = FALSE)
out$sleepstudy_uncorr_ml <- list(formula = "Reaction ~ Days + (Days || Subject)", dataset = "sleepstudy", reml = FALSE,
                                 ranef = ranef_long(f4))
writeLines(toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "lme4_results_extra.json")
