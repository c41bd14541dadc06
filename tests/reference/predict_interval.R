# merTools 0.5.2 (lme4 1.1-31): predictInterval(), simulated prediction intervals of a linear mixed model
# (fixed effects drawn from their sampling distribution, random effects from their conditional distribution,
# with and without the residual variance). Run from this folder: Rscript predict_interval.R
# (writes predict_interval.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages(library(merTools))
ss <- load_data("sleepstudy")
f <- "Reaction ~ Days + (Days | Subject)"
fit <- lmer(as.formula(f), ss)
rows <- c(1, 15, 42, 77, 123, 180)
new <- ss[rows, ]
set.seed(1)
pi_resid <- predictInterval(fit, newdata = new, level = 0.95, n.sims = 20000, stat = "mean",
                            include.resid.var = TRUE, seed = 1)
pi_fixed <- predictInterval(fit, newdata = new, level = 0.95, n.sims = 20000, stat = "mean",
                            include.resid.var = FALSE, seed = 2)
out <- list(formula = f, dataset = "sleepstudy", reml = TRUE, rows = rows - 1,
            prediction = as.list(pi_resid), confidence = as.list(pi_fixed))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "predict_interval.json")
