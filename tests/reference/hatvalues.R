# lme4 1.1-31 hatvalues() of linear mixed models, unweighted and with prior weights.
# Run from this folder: Rscript hatvalues.R  (writes lme4_hatvalues.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
ss <- load_data("sleepstudy")
ss$w <- 1 + ss$Days / 10
f <- "Reaction ~ Days + (Days | Subject)"
out <- list(
  sleepstudy = list(formula = f, dataset = "sleepstudy", weights = NULL,
                    hat = unname(hatvalues(lmer(as.formula(f), ss)))),
  sleepstudy_weighted = list(formula = f, dataset = "sleepstudy", weights = "1 + Days / 10",
                             hat = unname(hatvalues(lmer(as.formula(f), ss, weights = w))))
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE), "lme4_hatvalues.json")
