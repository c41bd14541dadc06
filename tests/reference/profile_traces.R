# lme4's profile traces (as.data.frame(profile(fit))): ζ at the parameter values lme4 evaluated, for the tests of
# jaxmlm's profile_traces (the curves of the profile plot). lme4 profiles sd/cor (signames = FALSE names them
# sd_(Intercept)|Subject, ...) and the fixed effects on the ML deviance.
# Run from this folder:  Rscript profile_traces.R   (writes lme4_profile_traces.json)
source("load_data.R")
sleepstudy <- load_data("sleepstudy")
cbpp <- load_data("cbpp")
traces <- function(fit) {
  pr <- as.data.frame(profile(fit, signames = FALSE))
  rows <- lapply(seq_len(nrow(pr)), function(i) {
    par <- as.character(pr$.par[i])
    list(parameter = par, value = pr[[par]][i], zeta = pr$.zeta[i])
  })
  rows
}
out <- list(
  sleepstudy_ml = traces(lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)),
  cbpp_laplace = traces(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial))
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_profile_traces.json")
