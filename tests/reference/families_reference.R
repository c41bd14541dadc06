# Reference fits for the families with a dispersion parameter: glmmTMB 1.1.5 (the proper Laplace likelihood) for
# NB2 (nbinom2), NB1 (nbinom1), Gamma (log link) and beta; lme4 1.1-31 glmer.nb and
# glmer(Gamma(link = "log")) / glmer(inverse.gaussian(link = "log")), whose objectives differ (docs/families.md).
# The Gamma, inverse Gaussian and beta responses are simulated here with a fixed seed and stored beside this
# script (families_sim.csv.gz).
# Run from this folder: Rscript families_reference.R  (writes families_sim.csv.gz and families_reference.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
suppressMessages(library(glmmTMB))
tight <- glmerControl(tolPwrss = 1e-13, optimizer = "nloptwrap",
                      optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15, maxeval = 20000))

set.seed(20261201)
n_groups <- 40; per_group <- 8
g <- factor(rep(sprintf("g%02d", seq_len(n_groups)), each = per_group))
x <- round(rnorm(n_groups * per_group), 4)
b <- rnorm(n_groups, sd = 0.5)[as.integer(g)]
mu_log <- exp(1 + 0.5 * x + b)
y_gamma <- signif(rgamma(length(x), shape = 2, scale = mu_log / 2), 8)

rig <- function(mu, lambda) {  # Michael, Schucany & Haas (1976)
  nu <- rnorm(length(mu)); yy <- nu^2
  xx <- mu + mu^2 * yy / (2 * lambda) - mu / (2 * lambda) * sqrt(4 * mu * lambda * yy + mu^2 * yy^2)
  ifelse(runif(length(mu)) <= mu / (mu + xx), xx, mu^2 / xx)
}
y_ig <- signif(rig(exp(0.5 + 0.3 * x + b), lambda = 4), 8)
mu_beta <- plogis(-0.3 + 0.6 * x + b)
y_beta <- signif(rbeta(length(x), mu_beta * 8, (1 - mu_beta) * 8), 8)
sim <- data.frame(g = g, x = x, y_gamma = y_gamma, y_ig = y_ig, y_beta = y_beta)
con <- gzfile("families_sim.csv.gz", "w"); write.csv(sim, con, row.names = FALSE); close(con)
sim <- read.csv(gzfile("families_sim.csv.gz")); sim$g <- factor(sim$g)

tmb_case <- function(fit, formula, dataset) {
  fam <- family(fit)$family
  sdr <- summary(fit$sdr, "fixed")
  d <- sigma(fit)
  se_betad <- sdr[rownames(sdr) == "betad", "Std. Error"]
  # sigma(fit) is exp(betad) except for Gamma, exp(-betad / 2)
  se_d <- if (fam == "Gamma") d * se_betad / 2 else d * se_betad
  vc <- VarCorr(fit)$cond
  list(engine = "glmmTMB", formula = formula, dataset = dataset, family = fam, link = family(fit)$link,
       nobs = nobs(fit), loglik = as.numeric(logLik(fit)), aic = AIC(fit),
       fixef = as.list(fixef(fit)$cond), se = as.list(sqrt(diag(vcov(fit)$cond))),
       re_sd = lapply(vc, function(m) unname(attr(m, "stddev"))),
       dispersion = d, dispersion_se = se_d, converged = fit$fit$convergence == 0)
}
lme4_case <- function(fit, formula, dataset, dispersion) {
  fam <- family(fit)
  list(engine = "lme4", formula = formula, dataset = dataset, family = fam$family, link = fam$link,
       nobs = nobs(fit), loglik = as.numeric(logLik(fit)), aic = AIC(fit),
       theta = unname(getME(fit, "theta")), fixef = as.list(fixef(fit)),
       se = as.list(sqrt(diag(as.matrix(vcov(fit))))), sigma = sigma(fit), dispersion = dispersion)
}
out <- list()
grouse <- load_data("grouseticks")
f_nb <- "TICKS ~ YEAR + cHEIGHT + (1 | BROOD)"
out$grouse_nbinom2_tmb <- tmb_case(glmmTMB(as.formula(f_nb), grouse, family = nbinom2), f_nb, "grouseticks")
out$grouse_nbinom1_tmb <- tmb_case(glmmTMB(as.formula(f_nb), grouse, family = nbinom1), f_nb, "grouseticks")
nb_control <- glmerControl(tolPwrss = 1e-10, optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15, maxeval = 20000))
nb <- glmer.nb(as.formula(f_nb), grouse, control = nb_control)
out$grouse_nbinom2_lme4 <- lme4_case(nb, f_nb, "grouseticks", getME(nb, "glmer.nb.theta"))

f_gamma <- "y_gamma ~ x + (1 | g)"
out$sim_gamma_log_tmb <- tmb_case(glmmTMB(as.formula(f_gamma), sim, family = Gamma(link = "log")), f_gamma, "sim")
ga <- glmer(as.formula(f_gamma), sim, family = Gamma(link = "log"), control = tight)
out$sim_gamma_log_lme4 <- lme4_case(ga, f_gamma, "sim", sigma(ga))
f_ig <- "y_ig ~ x + (1 | g)"
ig <- glmer(as.formula(f_ig), sim, family = inverse.gaussian(link = "log"), control = tight)
out$sim_ig_log_lme4 <- lme4_case(ig, f_ig, "sim", sigma(ig))
f_beta <- "y_beta ~ x + (1 | g)"
out$sim_beta_tmb <- tmb_case(glmmTMB(as.formula(f_beta), sim, family = beta_family()), f_beta, "sim")
out$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     glmmTMB = as.character(packageVersion("glmmTMB")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "families_reference.json")
