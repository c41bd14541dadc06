# lme4 1.1-31 GLMM fits beyond the public reference: other links, proportions with weights, a Poisson offset,
# crossed binomial terms, AGQ with 25 nodes, and conditional SDs of the modes.
# lme4's default PIRLS tolerance (tolPwrss = 1e-7) evaluates the Laplace log-determinant at the last-but-one
# PIRLS iterate, which moves its optimum slightly (fixef ~1e-4 relative, SEs ~1%); these fits use a tight
# tolerance and a tight optimizer, so they are the exact Laplace / AGQ optimum.
# Run from this folder: Rscript glmm_extra.R  (writes glmm_crossed.csv and lme4_glmm_extra.json)
source("load_data.R")  # lme4, jsonlite and load_data(name)
tight <- glmerControl(tolPwrss = 1e-13, optimizer = "nloptwrap",
                      optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15, maxeval = 20000))
summarise <- function(fit, formula, dataset, weights = NULL) {
  vc <- as.data.frame(VarCorr(fit))
  r <- as.data.frame(ranef(fit, condVar = TRUE))
  fam <- family(fit)
  list(formula = formula, dataset = dataset, family = fam$family, link = fam$link, reml = FALSE,
       nagq = fit@devcomp$dims[["nAGQ"]], weights = weights,
       nobs = nobs(fit), ngrps = as.list(ngrps(fit)),
       objective = -2 * as.numeric(logLik(fit)), loglik = as.numeric(logLik(fit)), aic = AIC(fit), bic = BIC(fit),
       theta = unname(getME(fit, "theta")), fixef = as.list(fixef(fit)),
       se = as.list(sqrt(diag(as.matrix(vcov(fit))))), sigma = NULL,
       varcorr = lapply(seq_len(nrow(vc)), function(i) list(grp = vc$grp[i],
         var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i], var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i],
         vcov = vc$vcov[i], sdcor = vc$sdcor[i])),
       singular = isSingular(fit),
       ranef = list(grpvar = as.character(r$grpvar), grp = as.character(r$grp), condval = r$condval,
                    condsd = r$condsd))
}
out <- list()
cbpp <- load_data("cbpp")
f <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
out$cbpp_logit_exact <- summarise(glmer(as.formula(f), cbpp, binomial, control = tight), f, "cbpp")
out$cbpp_probit <- summarise(glmer(as.formula(f), cbpp, binomial(link = "probit"), control = tight), f, "cbpp")
out$cbpp_cloglog <- summarise(glmer(as.formula(f), cbpp, binomial(link = "cloglog"), control = tight), f, "cbpp")
out$cbpp_agq25 <- summarise(glmer(as.formula(f), cbpp, binomial, nAGQ = 25, control = tight), f, "cbpp")
fp <- "incidence / size ~ period + (1 | herd)"
out$cbpp_proportion_weights <- summarise(glmer(as.formula(fp), cbpp, binomial, weights = size, control = tight),
                                         fp, "cbpp", weights = "size")
fo <- "incidence ~ period + offset(log(size)) + (1 | herd)"
out$cbpp_poisson_offset <- summarise(glmer(as.formula(fo), cbpp, poisson, control = tight), fo, "cbpp")
con <- load_data("Contraception")
fc <- "use ~ age + I(age^2) + urban + livch + (1 | district)"
out$contraception_exact <- summarise(glmer(as.formula(fc), con, binomial, control = tight), fc, "Contraception")

# a crossed binomial design: 30 subjects × 20 items, two observations each
set.seed(20240601)
cr <- expand.grid(subj = factor(sprintf("s%02d", 1:30)), item = factor(sprintf("i%02d", 1:20)), rep = 1:2)
cr$x <- round(rnorm(nrow(cr)), 3)
eta <- -0.3 + 0.8 * cr$x + rnorm(30, 0, 0.9)[cr$subj] + rnorm(20, 0, 0.6)[cr$item]
cr$y <- rbinom(nrow(cr), 1, plogis(eta))
cr$rep <- NULL
write.csv(cr, "glmm_crossed.csv", row.names = FALSE)
cr <- read.csv("glmm_crossed.csv", stringsAsFactors = TRUE)
fx <- "y ~ x + (1 | subj) + (1 | item)"
out$crossed_binomial <- summarise(glmer(as.formula(fx), cr, binomial, control = tight), fx, "glmm_crossed.csv")
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", pretty = TRUE), "lme4_glmm_extra.json")
