"""GLMM families (binomial, Poisson) register here; filled in with the generalized models."""
