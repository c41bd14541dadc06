# R's number formatting in lme4's summary (printCoefmat as print.summary.merMod calls it: digits = 4; format;
# format.pval), for tests of jaxmlm's display.
# Run from the repository root:  Rscript tests/reference/summary_text.R   (writes lme4_summary_text.json)
suppressMessages({
  library(lme4)
  library(jsonlite)
})
vectors <- list(
  c(251.405105, 10.467286, 6.824597, 1.545790),
  c(-1.39853, -0.99194, -1.12822, -1.57966, 0.23121, 0.30322, 0.32279, 0.42200),
  c(3.9037, 0.9131, -0.011461, 1.2e-6, 123456.7),
  c(0.5, 0.25, 0.125),
  c(1e-10, 2.5e-12),
  c(-3.2e5, 7.77e7, 1)
)
pvalues <- list(
  c(1.4699e-09, 0.0010683, 0.00047402, 0.00018193),
  c(0.5, 0.049, 1e-20, 0.0312),
  c(0.2, 0.9)
)
coefmats <- list(
  list(est = c(251.405105, 10.467286), se = c(6.824597, 1.545790)),
  list(est = c(3.90376, 0.91310, -0.011461, -0.078620), se = c(0.20484, 0.11966, 0.11900, 0.12385)),
  list(est = c(-1.39853, -0.99194), se = c(0.23121, 0.30322))
)
coef_text <- function(cm) {
  m <- cbind(Estimate = cm$est, `Std. Error` = cm$se, `t value` = cm$est / cm$se)
  out <- capture.output(printCoefmat(m, digits = 4))
  out
}
random_block <- function(fit) {  # the lines from "Random effects:" to the number of observations
  lines <- capture.output(print(summary(fit), correlation = FALSE))
  lines[seq(grep("^Random effects:", lines), grep("^Number of obs", lines))]
}
head_block <- function(fit) {  # the title, criteria and scaled residuals
  lines <- capture.output(print(summary(fit), correlation = FALSE))
  lines[seq_len(grep("^Random effects:", lines) - 2)]
}
sleep_fit <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
out <- list(
  format = lapply(vectors, function(v) list(x = v, digits4 = format(v, digits = 4), digits3 = format(v, digits = 3))),
  format_pval = lapply(pvalues, function(p) list(p = p, text = format.pval(p, digits = 3))),
  coefmat = lapply(coefmats, function(cm) c(cm, list(lines = coef_text(cm)))),
  sleepstudy_fixed = capture.output(printCoefmat(coef(summary(sleep_fit)), digits = 4)),
  pastes_random = random_block(lmer(strength ~ 1 + (1 | batch/cask), Pastes)),
  sleepstudy_ml_head = head_block(lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)),
  print_fits = list(  # print(fit): lme4's short form
    sleepstudy_reml = capture.output(print(sleep_fit)),
    sleepstudy_ml = capture.output(print(lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE))),
    pastes_reml = capture.output(print(lmer(strength ~ 1 + (1 | batch/cask), Pastes))),
    cbpp_laplace = capture.output(print(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp,
                                              binomial)))
  ),
  glmm_titles = lapply(c(1, 9), function(n) {
    fit <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial, nAGQ = n)
    head(capture.output(print(summary(fit), correlation = FALSE)), 3)
  })
)
writeLines(toJSON(out, auto_unbox = FALSE, digits = NA, pretty = TRUE), "tests/reference/lme4_summary_text.json")
