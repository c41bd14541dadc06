"""NUTS on the MRP cells model: jaxmlm's `Model.sample` against rstanarm's `stan_glmer`, same model, same poll.

The poll: `xbox_poll(5000, seed=0)` (Xbox-shaped, eight factors), as binomial cells; the model:
`xbox_formula()` (an intercept, eight scalar terms, state × age and sex × race). Both samplers run 4 chains with
rstanarm's default priors (jaxmlm: prior="rstanarm"), warmup = draws. Reported per sampler: wall time (jaxmlm's
includes compiling; rstanarm's model is precompiled), min bulk ESS and max split R-hat over every parameter
(intercept, sds, every random effect) and over the hyperparameters alone (intercept and sds), each
hyperparameter's bulk ESS and R-hat and each term's worst random effect, min ESS per second
of wall time and per CPU second (the machine may be shared). The R script is benchmarks/nuts_rstanarm.R; the JSON goes to benchmarks/results/nuts.json.

jaxmlm's wall time includes the point fit that sets the centring powers (`centring="fit"`, reported apart as
fit_s); `--centring prior` measures the earlier rule (half the sd prior's scale). `--effects laplace` samples with
the random effects integrated out by the Laplace approximation (no point fit needed); `--warmup` sets the warmup
apart from the draws. Both report the 51 state estimates poststratified to the population frame (posterior mean,
90% interval, bulk ESS and R-hat of each state's draws) and the point fit's for comparison.

Run:  python benchmarks/bench_nuts.py [--n 5000] [--draws 1000] [--warmup W] [--r-draws 1000] [--no-r]
                                      [--r-json previous.json] [--centring fit|prior] [--effects sampled|laplace]
                                      [--chain-method vectorized|sequential] [--out results/nuts.json]
                                      [--time-evaluation]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"


def state_draws(source, population, draws: int = 1000):
    """Per-draw state estimates Σ N μ / Σ N (states × draws, draws in the source's order), by poststratify's
    own pieces (in float64, as poststratify computes them)."""
    from jaxmlm._config import float64

    return float64(_state_draws)(source, population, draws)


def _state_draws(source, population, draws: int):
    import numpy as np

    from jaxmlm.bayes import _cells, _kernel
    from jaxmlm.bayes._mrp import _source_draws, _with_new_levels

    weights = _cells.check_weights(population, "N")
    group, keys, totals = _cells.group_codes(population, weights, ["state"])
    src = _source_draws(source, draws, 0, False, None)
    cells = _cells.cell_arrays(src.model, population, group, weights)
    b = _with_new_levels(src, cells.n_new, 0)
    q_total = sum(t.q for t in src.model.design.terms)
    size_c, size_d = _kernel.chunk_sizes(len(population), src.beta.shape[0], q_total, None, None)
    sims = np.asarray(_kernel.group_draws(cells, src.beta, b, src.model.family, totals, size_c, size_d))
    sims = sims.reshape(len(keys), -1)
    return (sims[:, 1:] if src.has_mode else sims), keys


def state_table(sims, keys, chains: int | None = None) -> dict:
    """Per state: mean, 90% interval (and bulk ESS, R-hat for posterior draws by chain)."""
    import numpy as np

    from jaxmlm.bayes._posterior import ess_bulk, split_rhat

    names = [str(k[0]) if isinstance(k, tuple) else str(k) for k in (keys.itertuples(index=False, name=None)
                                                                       if hasattr(keys, "itertuples") else keys)]
    out = {}
    for i, name in enumerate(names):
        row = dict(mean=float(sims[i].mean()), q05=float(np.quantile(sims[i], 0.05)),
                   q95=float(np.quantile(sims[i], 0.95)))
        if chains:
            by_chain = sims[i].reshape(chains, -1)
            row.update(ess_bulk=ess_bulk(by_chain), r_hat=split_rhat(by_chain))
        out[name] = row
    return out


def run_jaxmlm(cells_csv: str, draws: int, chains: int, prior: str, centring: str, effects: str = "sampled",
               warmup: int | None = None, chain_method: str = "vectorized", population=None) -> dict:
    import numpy as np
    import pandas as pd

    import jaxmlm as jm
    from jaxmlm.bayes._posterior import ess_bulk, split_rhat
    from jaxmlm.datasets.simulate import xbox_formula

    warmup = draws if warmup is None else warmup
    model = jm.Model(xbox_formula(), pd.read_csv(cells_csv), family="binomial")
    start, cpu_start = time.perf_counter(), time.process_time()
    # the point fit that sets the centring powers (sampled effects; timed apart) or, with effects="laplace", where
    # PIRLS starts (run inside sample, so in its wall time)
    fit = model.fit(warn=False) if centring == "fit" and effects == "sampled" else None
    fit_s = time.perf_counter() - start
    post = model.sample(chains=chains, draws=draws, warmup=warmup, seed=1, prior=prior, effects=effects,
                        centring=fit if fit is not None else (centring if effects == "laplace" else "prior"),
                        chain_method=chain_method)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    table = post.summary()
    names = model.design.group_names
    per_term = {names[k]: dict(min_ess_bulk=float(min(ess_bulk(b[:, :, j, 0]) for j in range(b.shape[2]))),
                               max_rhat=float(max(split_rhat(b[:, :, j, 0]) for j in range(b.shape[2]))))
                for k, b in enumerate(post._b)}
    ess_all = min(table["ess_bulk"].min(), min(t["min_ess_bulk"] for t in per_term.values()))
    rhat_all = max(table["r_hat"].max(), max(t["max_rhat"] for t in per_term.values()))
    steps = np.asarray(post.mcmc.get_extra_fields()["num_steps"])
    states = {}
    if population is not None:
        sims, keys = state_draws(post, population)
        states = state_table(sims, keys, chains)
    return dict(wall_s=wall, fit_s=fit_s, cpu_s=cpu, chains=chains, warmup=warmup, draws=draws, prior=prior,
                centring=centring, effects_integration=effects,
                chain_method=chain_method,
                cells=int(model.design.n), states=states,
                min_ess_bulk_states=float(min((r["ess_bulk"] for r in states.values()), default=np.nan)),
                max_rhat_states=float(max((r["r_hat"] for r in states.values()), default=np.nan)),
                hyper={name: dict(mean=float(row["mean"]), ess_bulk=float(row["ess_bulk"]), r_hat=float(row["r_hat"]))
                       for name, row in table.iterrows()},
                effects=per_term,
                min_ess_bulk=float(ess_all), max_rhat=float(rhat_all),
                min_ess_bulk_hyper=float(table["ess_bulk"].min()), max_rhat_hyper=float(table["r_hat"].max()),
                ess_per_s=float(ess_all / wall), ess_per_cpu_s=float(ess_all / cpu), mean_leapfrog_steps=float(steps.mean()),
                divergences=post.divergences, intercept_mean=float(table.loc["(Intercept)", "mean"]),
                intercept_sd=float(table.loc["(Intercept)", "sd"]),
                sd_mean={name: float(row["mean"]) for name, row in table.iterrows() if name.startswith("sd_")})


def time_laplace_evaluation(cells_csv: str, chains: int, repeats: int = 20) -> dict:
    """The Laplace deviance's value and value-and-gradient at the point fit's neighbourhood (θ = 0.5, β = 0), warm,
    medians of `repeats` calls, wall and CPU milliseconds: the value, the gradient by autodiff through the Newton
    step and the factorization (`laplace_deviance`) and by the hand-written rule (`laplace_deviance_fast`, what
    the sampler uses), alone and vectorized over the chains (XLA's default optimization, as NumPyro compiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    import jaxmlm as jm
    from jaxmlm.core._laplace_grad import laplace_deviance_fast
    from jaxmlm.core._pirls import laplace_deviance
    from jaxmlm.datasets.simulate import xbox_formula
    from jaxmlm.fit._glmm import glmm_problem

    problem = glmm_problem(jm.Model(xbox_formula(), pd.read_csv(cells_csv), family="binomial"))
    with jax.enable_x64(True):
        x = jnp.concatenate([jnp.full((problem.structure.n_theta,), 0.5), jnp.zeros(problem.p)])
        xs = jnp.stack([x * (1 + 0.05 * c) for c in range(chains)])
        value = lambda x: laplace_deviance(x, problem, newton_steps=1)  # noqa: E731
        fast = lambda x: laplace_deviance_fast(x, problem, newton_steps=1)  # noqa: E731
        programs = dict(value=(value, x), grad_autodiff=(jax.value_and_grad(value), x),
                        grad_rule=(jax.value_and_grad(fast), x),
                        chains_value=(jax.vmap(value), xs),
                        chains_grad_autodiff=(jax.vmap(jax.value_and_grad(value)), xs),
                        chains_grad_rule=(jax.vmap(jax.value_and_grad(fast)), xs))
        out = {}
        for name, (f, arg) in programs.items():
            f = jax.jit(f)
            jax.block_until_ready(f(arg))
            wall, cpu = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                jax.block_until_ready(f(arg))
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            out[name] = dict(wall_ms=1e3 * float(np.median(wall)), cpu_ms=1e3 * float(np.median(cpu)))
    out["load"] = open("/proc/loadavg").read().split()[:3]
    return out


def run_point_fit(cells_csv: str, population) -> dict:
    """glmer's fit and its 1000 joint draws of (β, b) given θ̂, poststratified by state (the plug-in estimate)."""
    import pandas as pd

    import jaxmlm as jm
    from jaxmlm.datasets.simulate import xbox_formula

    fit = jm.Model(xbox_formula(), pd.read_csv(cells_csv), family="binomial").fit(warn=False)
    sims, keys = state_draws(fit, population)
    table = jm.poststratify(fit, population, weight="N", by=["state"], level=0.9)
    states = state_table(sims, keys)
    for (_, row), name in zip(table.iterrows(), states):
        states[name]["estimate"] = float(row["estimate"])
    return dict(theta=[float(v) for v in fit.theta], beta=[float(v) for v in fit._beta], states=states)


def run_rstanarm(cells_csv: str, draws: int, chains: int, out: pathlib.Path) -> dict:
    from jaxmlm.datasets.simulate import xbox_formula

    cmd = ["Rscript", str(HERE / "nuts_rstanarm.R"), cells_csv, xbox_formula(), str(chains), str(2 * draws), str(out)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["ess_per_s"] = result["min_ess_bulk"] / result["wall_s"]
    result["ess_per_cpu_s"] = result["min_ess_bulk"] / result["cpu_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0, help="the poll's seed")
    parser.add_argument("--centring", default="fit", choices=("fit", "prior"))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=None, help="jaxmlm's warmup (default: = draws)")
    parser.add_argument("--effects", default="sampled", choices=("sampled", "laplace"))
    parser.add_argument("--chain-method", default="vectorized", choices=("vectorized", "sequential", "parallel"))
    parser.add_argument("--states", action="store_true", help="also the point fit's state estimates")
    parser.add_argument("--r-draws", type=int, default=1000, help="rstanarm's draws per chain (warmup the same)")
    parser.add_argument("--no-r", action="store_true")
    parser.add_argument("--r-json", help="reuse a result written by nuts_rstanarm.R instead of running it")
    parser.add_argument("--out", default=str(RESULTS / "nuts.json"))
    parser.add_argument("--time-evaluation", action="store_true",
                        help="also time the Laplace deviance's value and gradient (before the run)")
    args = parser.parse_args()
    from jaxmlm.datasets.simulate import xbox_poll

    with tempfile.TemporaryDirectory() as tmp:
        cells_csv = str(pathlib.Path(tmp) / "cells.csv")
        poll = xbox_poll(args.n, seed=args.seed)
        poll.cells.to_csv(cells_csv, index=False)
        timing = time_laplace_evaluation(cells_csv, args.chains) if args.time_evaluation else None
        result = dict(poll_interviews=args.n, poll_seed=args.seed,
                      jaxmlm=run_jaxmlm(cells_csv, args.draws, args.chains, "rstanarm", args.centring, args.effects,
                                        args.warmup, args.chain_method, poll.population),
                      truth={str(k): float(v) for k, v in poll.truth.items()})
        if timing is not None:
            result["evaluation_ms"] = timing
        if args.states:
            result["point_fit"] = run_point_fit(cells_csv, poll.population)
        if args.r_json:
            r = json.loads(pathlib.Path(args.r_json).read_text())
            r.update(ess_per_s=r["min_ess_bulk"] / r["wall_s"], ess_per_cpu_s=r["min_ess_bulk"] / r["cpu_s"])
            result["rstanarm"] = r
        elif not args.no_r:
            result["rstanarm"] = run_rstanarm(cells_csv, args.r_draws, args.chains, pathlib.Path(tmp) / "r.json")
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("jaxmlm", "rstanarm"):
        if name in result:
            r = result[name]
            print(f"{name:9s} {r['chains']}×{r['draws']}: {r['wall_s']:7.1f} s  min bulk ESS {r['min_ess_bulk']:7.1f}  "
                  f"max R-hat {r['max_rhat']:.4f}  states: min ESS {r.get('min_ess_bulk_states', float('nan')):.1f} "
                  f"max R-hat {r.get('max_rhat_states', float('nan')):.4f}  ESS/s {r['ess_per_s']:.2f}  ESS/CPU-s {r['ess_per_cpu_s']:.2f}", file=sys.stderr)
    for group in ("hyper", "effects"):
        for name, row in result["jaxmlm"][group].items():
            ess, rhat = row.get("ess_bulk", row.get("min_ess_bulk")), row.get("r_hat", row.get("max_rhat"))
            print(f"  {name:24s} bulk ESS {ess:7.1f}  R-hat {rhat:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
