# R's model matrices for the formula language: every construct in every position (fixed part, random-effects
# predictor, grouping factor), on a small synthetic data set generated here with a fixed seed. Run from this
# folder:  cd tests/reference && Rscript formula_matrices.R
# It writes formula_matrices.json: the data (factors with their levels), and per formula lme4's
#   lFormula(f, data)$X (after lme4 drops dependent columns), model.matrix(nobars(f), data) (before),
#   t(as.matrix(reTrms$Zt)) with a key per column ("term index|group|level|coefficient", lme4's term order),
#   cnms, and the levels of each grouping factor;
# and the ChickWeight regression case (a quadratic random slope on the integer Time column) fitted by ML, with
# the data written to formula_chickweight.csv.gz.
source("load_data.R")

set.seed(20261201)
n <- 48
d <- data.frame(
  yield = round(rnorm(n, 10, 2), 4),
  class = factor(sample(c("lo", "mid", "hi"), n, replace = TRUE), levels = c("lo", "mid", "hi")),
  a.b = round(rnorm(n), 4),
  Time = sample(0:5, n, replace = TRUE),
  x = round(runif(n, 0.5, 3), 4),
  w = round(runif(n, 0.5, 2), 4),
  f = factor(sample(c("a", "b", "c"), n, replace = TRUE)),
  h = factor(sample(c("u", "v"), n, replace = TRUE)),
  o = factor(sample(c("low", "mid", "high"), n, replace = TRUE), levels = c("low", "mid", "high"),
             ordered = TRUE),
  g = factor(sprintf("g%d", rep(1:6, length.out = n))),
  k = sample(c(1L, 2L, 10L, 20L), n, replace = TRUE),
  check.names = FALSE
)
d[["my var"]] <- round(rnorm(n), 4)

formulas <- c(
  "yield ~ class + x + (1 | g)",
  "`yield` ~ `class` * x + (1 | g)",
  "yield ~ a.b + log(x) + I(Time^2) + (Time + I(Time^2) | g)",
  "yield ~ I(Time**2) + (I(Time^2) || g)",
  "yield ~ factor(Time) + (1 | k)",
  "yield ~ x + (0 + factor(Time) | g)",
  "yield ~ f:h + (1 | g)",
  "yield ~ (f + h + x)^2 + (1 | g)",
  "yield ~ f * h - h + (x | g)",
  "yield ~ 0 + f + h + (0 + f | g)",
  "yield ~ x - 1 + (1 | g:k)",
  "yield ~ -1 + x + f + (1 | g) + (1 | k)",
  "yield ~ x %in% f + (1 | g/k)",
  "yield ~ f/x + offset(log(w)) + (1 | g) + (1 | k)",
  "yield ~ poly(x, 2) + (poly(Time, 2) | g)",
  "yield ~ o + o:x + (1 | g)",
  "yield ~ I(x > 1) + log(w, 2) + (x || g)",
  "yield ~ h * x + (0 + h | g) + (1 | k)",
  "yield ~ class + (class | k)",
  "yield ~ `my var` + exp(-x/2) + (1 | g)",
  "a.b ~ Time + factor(Time):h + (factor(h) | g)",
  "yield ~ x + (1 | g) + (0 + x | g)",
  "yield ~ x + (-1 + x | g) + (1 | g:h)",
  "yield ~ x:f + a.b:h + (x:f | g)",
  "yield ~ (x + a.b) * h + ((1 | g) + (0 + x | g))",
  "yield ~ C(f, contr.sum) + C(class, helmert) + (1 | g)",
  "yield ~ relevel(f, \"b\") * x + (C(h, sum) | g)",
  "yield ~ C(o, treatment) + C(f, \"contr.SAS\") + relevel(class, ref = \"hi\"):x + (1 | g)"
)

# and formulas drawn at random from the constructs, in every position (fixed part, random-effects predictor with
# and without its intercept, correlated or not, grouping by a factor, an interaction or a nesting)
set.seed(17)
atoms <- c("x", "a.b", "Time", "f", "h", "o", "class", "I(Time^2)", "log(x)", "factor(Time)", "poly(x, 2)",
           "`my var`", "C(f, sum)", "I(x > 1)")
draw_expr <- function(max_atoms) {
  chosen <- sample(atoms, sample(1:max_atoms, 1))
  ops <- sample(c(" + ", " * ", ":"), length(chosen), replace = TRUE)
  text <- chosen[1]
  for (j in seq_along(chosen)[-1]) text <- paste0(text, ops[j], chosen[j])
  text
}
draw_formula <- function() {
  fixed <- paste0(sample(c("", "0 + ", "-1 + "), 1, prob = c(3, 1, 1)), draw_expr(3))
  group <- sample(c("g", "k", "g:h", "g/h", "h:g"), 1)
  lhs <- sample(c("1", "draw", "0 + draw", "draw - 1"), 1)
  lhs <- sub("draw", draw_expr(2), lhs)
  bar <- sample(c(" | ", " || "), 1, prob = c(3, 1))
  extra <- sample(c("", " + (1 | k)", " + (0 + x | g)"), 1)
  paste0("yield ~ ", fixed, " + (", lhs, bar, group, ")", extra)
}
drawn <- unique(replicate(60, draw_formula()))
# jaxmlm refuses a slope on a variable that also groups the term (constant within its levels), as in (h | g:h)
slope_on_grouping <- function(text) {
  any(vapply(findbars(as.formula(text)), function(b) any(all.vars(b[[2]]) %in% all.vars(b[[3]])), NA))
}
usable <- Filter(function(text) {
  ok <- try(!slope_on_grouping(text) && !is.null(suppressMessages(lFormula(as.formula(text), d))), silent = TRUE)
  isTRUE(ok)
}, drawn)
formulas <- c(formulas, head(usable, 40))

# lme4 cannot evaluate factor() around a grouping factor (it looks for the variable in the model frame), where
# jaxmlm reads it as the factor it is: the Python tests fit this spelling against the R formula above
jaxmlm_spellings <- list("yield ~ factor(Time) + (1 | k)" = "yield ~ factor(Time) + (1 | factor(k))")

z_keys <- function(rt) {
  keys <- character(0)
  for (i in seq_along(rt$cnms)) {
    fac <- rt$flist[[attr(rt$flist, "assign")[i]]]
    for (l in levels(fac)) for (cn in rt$cnms[[i]]) keys <- c(keys, paste(i, names(rt$cnms)[i], l, cn, sep = "|"))
  }
  keys
}

one_case <- function(text) {
  f <- as.formula(text)
  lf <- suppressMessages(lFormula(f, d))
  mm <- model.matrix(nobars(f), d)
  rt <- lf$reTrms
  Z <- t(as.matrix(rt$Zt))
  list(
    formula = text,
    jaxmlm_formula = if (is.null(jaxmlm_spellings[[text]])) text else jaxmlm_spellings[[text]],
    x_names = colnames(lf$X), X = unname(lf$X),
    mm_names = colnames(mm), mm = unname(mm),
    z_keys = z_keys(rt), Z = unname(Z),
    cnms = unname(lapply(rt$cnms, as.list)), groups = names(rt$cnms),
    flist_levels = lapply(as.list(rt$flist), levels),
    offset = model.offset(lf$fr),
    y = unname(model.response(lf$fr))
  )
}
cases <- lapply(formulas, one_case)

factor_columns <- function(frame) {
  lapply(frame, function(col) {
    if (is.factor(col)) list(kind = "factor", levels = levels(col), ordered = is.ordered(col),
                             values = as.character(col))
    else if (is.integer(col)) list(kind = "integer", values = col)
    else list(kind = "numeric", values = col)
  })
}

# us() / diag() against lme4's (x | g) and (x || g)
sleep <- lme4::sleepstudy
spellings <- list(
  us = lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE),
  diag = lmer(Reaction ~ Days + (Days || Subject), sleep, REML = FALSE)
)
spelling_fits <- lapply(spellings, function(m) list(deviance = deviance(m), theta = unname(getME(m, "theta")),
                                                     fixef = unname(fixef(m))))

# ChickWeight: a quadratic random slope on the integer Time column
cw <- as.data.frame(datasets::ChickWeight)
cw$Chick <- factor(as.character(cw$Chick), levels = as.character(sort(as.integer(levels(cw$Chick)))))
cw$Diet <- factor(as.character(cw$Diet))
con <- gzfile("formula_chickweight.csv.gz", "w")
write.csv(cw[, c("weight", "Time", "Chick", "Diet")], con, row.names = FALSE)
close(con)
# lme4's default optimizer (nloptwrap); bobyqa stops on a worse boundary point here (deviance 4259.16)
cw_formula <- weight ~ Time + I(Time^2) + (Time + I(Time^2) | Chick)
cw_fit <- lmer(cw_formula, cw, REML = FALSE)
cw_devfun <- lmer(cw_formula, cw, REML = FALSE, devFunOnly = TRUE)
chick <- list(formula = "weight ~ Time + I(Time^2) + (Time + I(Time^2) | Chick)", deviance = deviance(cw_fit),
              fixef = as.list(fixef(cw_fit)), theta = unname(getME(cw_fit, "theta")), sigma = sigma(cw_fit),
              chick_levels = levels(cw$Chick),
              # lme4's deviance function at a θ given in the test (the optimum Nelder-Mead also reaches)
              devfun_theta = c(0.77426, -0.52351, 0.015966, 0.087576, -0.030002, 0),
              devfun_value = cw_devfun(c(0.77426, -0.52351, 0.015966, 0.087576, -0.030002, 0)))

out <- list(data = factor_columns(d), cases = cases, spellings = spelling_fits, chickweight = chick,
            r_version = R.version.string, lme4_version = as.character(packageVersion("lme4")))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null"), "formula_matrices.json")
