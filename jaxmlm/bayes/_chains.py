"""NUTS chains as one compiled program each, run vectorized, one after another, or side by side on the cores.

NumPyro's `MCMC` driver re-initializes and, with `chain_method="sequential"`, compiles its sampling loop again for
every chain, and its vectorized chains wait at each draw for the chain with the longest trajectory. Here the
NumPyro model is turned into its potential once (`numpyro.infer.util.initialize_model`, every chain's start drawn
by NumPyro's default strategy), and one chain — NumPyro's NUTS kernel (its functional `hmc` interface, with its
step-size and mass-matrix adaptation), warmup and draws in one loop that keeps the draws only — is one program:

* "vectorized": the chain program vmapped over chains, one call (an accelerator's choice);
* "sequential": the chain program compiled once, the chains run one after another;
* "parallel": the chain program compiled once before any chain starts, the chains run in threads, as many at a
  time as the machine has cores (or devices): XLA runs without Python's lock, so on a CPU each core samples its
  own chain and no chain waits for another's trajectory.

The constrained values of every draw (NumPyro's postprocessing: the deterministic sites) are formed afterwards,
vectorized over draws in chunks, by the model given as `sites_model`: a model with the same latent sites that
skips an expensive likelihood (the Laplace sampler's priors alone). It also gives the chains' starts, so that the
likelihood is traced and compiled only inside the chain program.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import carry_effort, jit

__all__ = ["CHAIN_METHODS", "ChainRun", "default_chain_method", "run_nuts"]

CHAIN_METHODS = ("vectorized", "sequential", "parallel")
_SITE_CHUNK = 512  # draws per call of the postprocessing program


@dataclasses.dataclass
class ChainRun:
    """The draws of a run, chains first: `samples` (constrained sites), `diverging` and `num_steps` (chains ×
    draws). `get_samples` / `get_extra_fields` read them as NumPyro's MCMC does."""

    samples: dict
    diverging: np.ndarray
    num_steps: np.ndarray
    chain_method: str

    def get_samples(self, group_by_chain: bool = False) -> dict:
        if group_by_chain:
            return dict(self.samples)
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def get_extra_fields(self, group_by_chain: bool = False) -> dict:
        fields = dict(diverging=self.diverging, num_steps=self.num_steps)
        return fields if group_by_chain else {k: v.reshape(-1) for k, v in fields.items()}


def default_chain_method() -> str:
    """'parallel' on a CPU (a chain per core), 'vectorized' on an accelerator (one wide program)."""
    return "parallel" if jax.default_backend() == "cpu" else "vectorized"


def _workers(chains: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_cpu = jax.default_backend() == "cpu"
    return max(1, min(chains, cores if on_cpu else jax.local_device_count()))


def _chain_program(init_kernel, sample_kernel, warmup: int, draws: int, kernel_options: dict):
    """One chain from its key and start: adaptation during `warmup` iterations, then `draws` kept draws (the
    unconstrained coordinates, divergence and leapfrog steps). One loop over all iterations, each writing its
    slot of the draws (warmup iterations write slot 0, which the first kept draw overwrites), so the NUTS kernel
    appears once in the program."""

    def one_chain(key, z, args):
        state = init_kernel(z, warmup, model_args=args, rng_key=key, **kernel_options)
        kept = (jax.tree.map(lambda x: jnp.zeros((draws,) + x.shape, x.dtype), state.z),
                jnp.zeros((draws,), bool), jnp.zeros((draws,), jnp.int32))

        def body(i, carry):
            s, kept = carry
            s = sample_kernel(s, model_args=args)
            slot = jnp.maximum(i - warmup, 0)
            new = (s.z, s.diverging, s.num_steps.astype(jnp.int32))
            return s, jax.tree.map(lambda buffer, value: buffer.at[slot].set(value), kept, new)

        return jax.lax.fori_loop(0, warmup + draws, body, (state, kept))[1], state.potential_energy

    return one_chain


def run_nuts(model, args: tuple, key, *, chains: int, warmup: int, draws: int, target_accept: float = 0.8,
             max_tree_depth: int = 10, dense_mass: bool = False, chain_method: str = "parallel",
             sites_model=None, progress: bool = False) -> ChainRun:
    """NUTS on the NumPyro `model(*args)`: `chains` chains of `warmup` adaptation and `draws` kept iterations.
    Returns the constrained sites of `sites_model` (default `model`) at every draw, chains first. progress: a
    line on standard error as each chain (or, vectorized, the run) finishes."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import get_potential_fn, initialize_model

    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    key_init, key_run = jax.random.split(key)
    info = initialize_model(jax.random.split(key_init, chains), sites_model or model, model_args=args,
                            dynamic_args=True)
    potential = info.potential_fn
    if sites_model is not None:
        # the starts and transforms from the cheaper model (the same latent sites): NumPyro's check of the start
        # would trace and compile the expensive likelihood once more; the chain program reports its start instead
        transforms = {name: biject_to(site["fn"].support) for name, site in info.model_trace.items()
                      if site["type"] == "sample" and not site["is_observed"]}
        potential = get_potential_fn(model, transforms, dynamic_args=True, model_args=args)[0]
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential, algo="NUTS")
    options = dict(dense_mass=dense_mass, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    one_chain = _chain_program(init_kernel, sample_kernel, warmup, draws, options)
    starts, keys = info.param_info.z, jax.random.split(key_run, chains)
    start_of = lambda c: jax.tree.map(lambda x: x[c], starts)  # noqa: E731

    started = time.perf_counter()

    def report(what: str) -> None:
        if progress:
            print(f"{what} done ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)

    if chain_method == "vectorized":
        (z, diverging, steps), start_energy = jax.block_until_ready(
            jit(jax.vmap(one_chain, in_axes=(0, 0, None)))(keys, starts, args))
        report(f"{chains} chains")
    else:
        program = jit(one_chain)
        # compiled here, before any chain runs: tracing the model uses NumPyro's handler stack, which is global
        variant = program.variant_for((keys[0], start_of(0), args), {})
        variant.lower(keys[0], start_of(0), args).compile()
        x64 = bool(jax.config.jax_enable_x64)

        @carry_effort
        def chain(c):
            with jax.enable_x64(x64):
                out = jax.block_until_ready(program(keys[c], start_of(c), args))
            report(f"chain {c + 1} of {chains}")
            return out

        if chain_method == "sequential":
            outs = [chain(c) for c in range(chains)]
        else:
            outs = _side_by_side(chain, chains)
        (z, diverging, steps), start_energy = jax.tree.map(lambda *parts: np.stack([np.asarray(x) for x in parts]),
                                                           *outs)
    bad = np.flatnonzero(~np.isfinite(np.asarray(start_energy)))
    if bad.size:
        raise FloatingPointError(f"NUTS started chain(s) {', '.join(str(c + 1) for c in bad)} where the log "
                                 "density is not finite: the draws would not move; try another seed")
    samples = _constrained(info.postprocess_fn, args, z, chains, draws)
    return ChainRun(samples=samples, diverging=np.asarray(diverging), num_steps=np.asarray(steps),
                    chain_method=chain_method)


def _side_by_side(chain, chains: int) -> list:
    """chain(c) for every chain, in threads (`_workers`). Interrupted (Ctrl-C) or failed, the chains not yet started
    are cancelled and the call returns at once: the running ones cannot be stopped inside their compiled program,
    so they finish in the background and their draws are dropped, the process left usable."""
    pool = concurrent.futures.ThreadPoolExecutor(_workers(chains), thread_name_prefix="jaxmlm-chain")
    try:
        futures = [pool.submit(chain, c) for c in range(chains)]
        outs = [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outs


def _constrained(postprocess, args, z, chains: int, draws: int) -> dict:
    """A model's sites (latent and deterministic, constrained: `postprocess`, NumPyro's) at every draw of z
    (chains × draws × ...). The draws are chunked on the host (eager slices and joins in JAX compile a program
    per shape and site)."""
    flat = jax.tree.map(lambda x: np.asarray(x).reshape((chains * draws,) + x.shape[2:]), z)
    program = jit(lambda zs, args: jax.vmap(postprocess(*args))(zs))
    n = chains * draws
    size = min(_SITE_CHUNK, n)
    pad = -n % size
    padded = jax.tree.map(lambda x: x[np.arange(n + pad) % n] if pad else x, flat)
    parts = [program(jax.tree.map(lambda x: x[i:i + size], padded), args) for i in range(0, n + pad, size)]
    sites = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs])[:n], *parts)
    return {k: v.reshape((chains, draws) + v.shape[1:]) for k, v in sites.items()}
