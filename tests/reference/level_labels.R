# Level labels of grouping factors that are numeric or logical columns: R's factor() writes as.character of
# each value. Run from this folder: Rscript level_labels.R (writes level_labels.json).
source("load_data.R")
sleep <- load_data("sleepstudy")
subj <- as.numeric(sleep$Subject)           # 1, 2, ..., 18 as doubles
sleep$subj_double <- subj
sleep$subj_scaled <- subj * 1e5              # 1e+05, 2e+05, ...
sleep$subj_frac <- subj / 4                  # 0.25, 0.5, ...
sleep$late <- sleep$Days > 4                 # logical
fits <- list(
  subj_double = lmer(Reaction ~ Days + (1 | subj_double), sleep, REML = FALSE),
  subj_scaled = lmer(Reaction ~ Days + (1 | subj_scaled), sleep, REML = FALSE),
  subj_frac = lmer(Reaction ~ Days + (1 | subj_frac), sleep, REML = FALSE),
  late = lmer(Reaction ~ Days + (1 | late), sleep, REML = FALSE)
)
out <- lapply(names(fits), function(g) {
  f <- fits[[g]]
  list(group = g, levels = rownames(ranef(f)[[g]]), ranef = ranef(f)[[g]][, 1],
       deviance = deviance(f))
})
values <- c(1, 2.5, 1e5, 123456, 1e-4, 1e-3, 0.1 + 0.2, 1e15, -3, 1 / 3, 7e-10, 250000)
write(toJSON(list(fits = out, values = values, labels = as.character(values)), digits = NA, auto_unbox = TRUE),
      "level_labels.json")
