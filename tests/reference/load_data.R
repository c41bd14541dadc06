# The bundled datasets as R factors (levels in R's order, from the schema), for the reference scripts run from
# this folder: source("load_data.R").
suppressMessages({library(lme4); library(jsonlite)})
data_dir <- file.path("..", "..", "jaxmlm", "datasets", "data")
schema <- fromJSON(file.path(data_dir, "schema.json"), simplifyVector = FALSE)
load_data <- function(name) {
  df <- read.csv(gzfile(file.path(data_dir, paste0(name, ".csv.gz"))), colClasses = "character")
  for (col in names(schema[[name]]$columns)) {
    spec <- schema[[name]]$columns[[col]]
    if (spec$kind == "factor") df[[col]] <- factor(df[[col]], levels = unlist(spec$levels))
    else df[[col]] <- as.numeric(df[[col]])
  }
  df
}
