# glmmTMB 1.1.5 fits with cs() and ar1() covariance structures on simulated repeated measures (seeded); the data
# are stored beside this script (covstruct_cs.csv, covstruct_ar1.csv) and the fits in covstruct.json.
# Run from this folder: Rscript covstruct.R
suppressMessages({library(glmmTMB); library(MASS); library(jsonlite)})
set.seed(20261201)

# compound symmetry: 40 groups, a 3-level factor f, 3 replicates per (group, level): the per-level sds and the
# residual sd are separately identified
n_g <- 40; sds <- c(1.0, 0.7, 1.3); rho <- 0.5
S <- diag(sds) %*% (matrix(rho, 3, 3) + diag(1 - rho, 3)) %*% diag(sds)
U <- mvrnorm(n_g, rep(0, 3), S)
cs_data <- expand.grid(rep = 1:3, f = c("a", "b", "c"), g = sprintf("g%02d", 1:n_g), stringsAsFactors = FALSE)
cs_data$x <- round(rnorm(nrow(cs_data)), 4)
gi <- match(cs_data$g, sprintf("g%02d", 1:n_g)); fi <- match(cs_data$f, c("a", "b", "c"))
cs_data$y <- round(1 + 0.5 * cs_data$x + U[cbind(gi, fi)] + rnorm(nrow(cs_data), sd = 0.8), 4)
eta <- -0.2 + 0.3 * cs_data$x + 0.6 * U[cbind(gi, fi)]
cs_data$count <- rpois(nrow(cs_data), exp(eta))
write.csv(cs_data[, c("g", "f", "rep", "x", "y", "count")], "covstruct_cs.csv", row.names = FALSE)

# AR(1): 60 groups observed at 4 time points, one observation each
n_g <- 60; n_t <- 4; phi <- 0.6
ar_data <- expand.grid(time = 1:n_t, g = sprintf("s%02d", 1:n_g), stringsAsFactors = FALSE)
A <- mvrnorm(n_g, rep(0, n_t), 1.0^2 * phi^as.matrix(dist(1:n_t)))
gi <- match(ar_data$g, sprintf("s%02d", 1:n_g))
ar_data$y <- round(2 + 0.3 * ar_data$time + A[cbind(gi, ar_data$time)] + rnorm(nrow(ar_data), sd = 0.7), 4)
write.csv(ar_data, "covstruct_ar1.csv", row.names = FALSE)

read_back <- function(path) {  # the stored (rounded) values, as the tests read them
  d <- read.csv(path, stringsAsFactors = FALSE)
  d$g <- factor(d$g)
  if ("f" %in% names(d)) d$f <- factor(d$f, levels = c("a", "b", "c"))
  if ("time" %in% names(d)) d$ftime <- factor(d$time, levels = 1:4)
  d
}
summarize_fit <- function(fit, formula, family, data_file) {
  vc <- VarCorr(fit)$cond[[1]]
  sdr <- fit$sdr
  list(formula = formula, family = family, data = data_file, nobs = nobs(fit),
       loglik = as.numeric(logLik(fit)), df = attr(logLik(fit), "df"), aic = AIC(fit), bic = BIC(fit),
       fixef = as.list(fixef(fit)$cond), se = as.list(sqrt(diag(vcov(fit)$cond))),
       sd = unname(attr(vc, "stddev")), cor = unname(attr(vc, "correlation")),
       sigma = if (family == "gaussian") sigma(fit) else NULL,
       theta = unname(fit$fit$par[names(fit$fit$par) == "theta"]),
       pdHess = sdr$pdHess, seconds = NA)
}
cases <- list()
d <- read_back("covstruct_cs.csv")
t0 <- proc.time()[["elapsed"]]
fit <- glmmTMB(y ~ x + cs(0 + f | g), data = d, REML = FALSE)
cases$cs_gaussian <- summarize_fit(fit, "y ~ x + cs(0 + f | g)", "gaussian", "covstruct_cs.csv")
cases$cs_gaussian$seconds <- proc.time()[["elapsed"]] - t0
t0 <- proc.time()[["elapsed"]]
fit <- glmmTMB(count ~ x + cs(0 + f | g), data = d, family = poisson)
cases$cs_poisson <- summarize_fit(fit, "count ~ x + cs(0 + f | g)", "poisson", "covstruct_cs.csv")
cases$cs_poisson$seconds <- proc.time()[["elapsed"]] - t0
t0 <- proc.time()[["elapsed"]]
fit <- glmmTMB(y ~ x + cs(0 + f | g), data = d, REML = TRUE)
cases$cs_gaussian_reml <- summarize_fit(fit, "y ~ x + cs(0 + f | g)", "gaussian", "covstruct_cs.csv")
cases$cs_gaussian_reml$seconds <- proc.time()[["elapsed"]] - t0
d <- read_back("covstruct_ar1.csv")
t0 <- proc.time()[["elapsed"]]
fit <- glmmTMB(y ~ time + ar1(0 + ftime | g), data = d, REML = FALSE)
cases$ar1_gaussian <- summarize_fit(fit, "y ~ time + ar1(0 + ftime | g)", "gaussian", "covstruct_ar1.csv")
cases$ar1_gaussian$seconds <- proc.time()[["elapsed"]] - t0
cases$meta <- list(R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB")))
writeLines(toJSON(cases, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), "covstruct.json")
