# rstanarm's stan_glmer on the Xbox-shaped cells (the same model jaxmlm samples in bench_nuts.py), with its
# default priors: normal(0, 2.5) for the intercept on centred predictors, decov(1, 1, 1, 1) for the covariance
# (for a scalar term: sd ~ exponential(1)).
# Usage: Rscript nuts_rstanarm.R cells.csv formula chains iter out.json   (iter = warmup + draws, half each)
suppressPackageStartupMessages({library(rstanarm); library(posterior); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
cells <- read.csv(args[1], stringsAsFactors = TRUE)
formula <- as.formula(args[2])
chains <- as.integer(args[3]); iter <- as.integer(args[4])
cpu <- function() { t <- proc.time(); sum(t[c("user.self", "sys.self", "user.child", "sys.child")], na.rm = TRUE) }
t0 <- proc.time()[["elapsed"]]; c0 <- cpu()
fit <- stan_glmer(formula, data = cells, family = binomial, chains = chains, iter = iter,
                  cores = min(chains, parallel::detectCores()), seed = 1, refresh = 0)
wall <- proc.time()[["elapsed"]] - t0; cpu_s <- cpu() - c0
draws <- as_draws_array(as.array(fit$stanfit))
keep <- !grepl("^(lp__|mean_PPD)", variables(draws))
draws <- subset_draws(draws, variable = variables(draws)[keep])
s <- summarise_draws(draws, "mean", "sd", "rhat", "ess_bulk")
hyper <- grepl("^(\\(Intercept\\)|Sigma\\[)", s$variable)
elapsed <- rstan::get_elapsed_time(fit$stanfit)
sds <- sqrt(colMeans(as.matrix(fit, regex_pars = "^Sigma\\[")))
cat(toJSON(list(
  wall_s = wall, cpu_s = cpu_s, chains = chains, warmup = iter %/% 2, draws = iter - iter %/% 2,
  sampling_s_per_chain = as.numeric(rowSums(elapsed)),
  min_ess_bulk = min(s$ess_bulk), max_rhat = max(s$rhat),
  min_ess_bulk_hyper = min(s$ess_bulk[hyper]), max_rhat_hyper = max(s$rhat[hyper]),
  n_parameters = nrow(s),
  intercept_mean = s$mean[s$variable == "(Intercept)"], intercept_sd = s$sd[s$variable == "(Intercept)"],
  sd_names = names(sds), sd_mean = as.numeric(sds),
  divergences = sum(rstan::get_divergent_iterations(fit$stanfit)),
  version = as.character(packageVersion("rstanarm"))), digits = NA, auto_unbox = TRUE),
  file = args[5])
