# lme4 1.1-31: the loop simr's powerSim runs, on 50 responses simulated from sleepstudy's ML fit of
# Reaction ~ Days + (Days | Subject) with the Days effect set to 3: refit() of the model with and without Days and
# anova()'s likelihood-ratio p-value per simulation. Run from this folder: Rscript power.R  (writes power.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
ss <- load_data("sleepstudy")
fit1 <- lmer(Reaction ~ Days + (Days | Subject), ss, REML = FALSE)
fit0 <- lmer(Reaction ~ 1 + (Days | Subject), ss, REML = FALSE)
beta <- fixef(fit1); beta[["Days"]] <- 3
sims <- simulate(fit1, nsim = 50, seed = 1,
                 newparams = list(beta = beta, theta = getME(fit1, "theta"), sigma = sigma(fit1)))
tests <- lapply(sims, function(y) {
  f1 <- suppressMessages(suppressWarnings(refit(fit1, y)))
  f0 <- suppressMessages(suppressWarnings(refit(fit0, y)))
  c(p = suppressMessages(anova(f0, f1))[["Pr(>Chisq)"]][2], loglik1 = as.numeric(logLik(f1)),
    loglik0 = as.numeric(logLik(f0)))
})
tab <- do.call(rbind, tests)
out <- list(formula = "Reaction ~ Days + (Days | Subject)", dataset = "sleepstudy", effect = 3,
            y = unname(as.matrix(sims)), p = unname(tab[, "p"]), loglik_full = unname(tab[, "loglik1"]),
            loglik_reduced = unname(tab[, "loglik0"]))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA), "power.json")
