#!/usr/bin/env bash
# The accelerator run in one go: installs jaxmlm from this checkout if it is not importable, reports the JAX
# backend, then runs benchmarks/device_run.py (every workload in a child process of its own, time-limited, one
# JSON line per workload in the results file). Uses whatever JAX is installed; with no network there, missing
# packages must come as wheels in .whl/ (see docs/scale.md).
#
#   benchmarks/device.sh [--scale full|small|tiny] [--out FILE] [--budget SECONDS] [--only name,name]
#
# Defaults: --scale full, --out device_results.jsonl, --budget 480 (all workloads within 8 minutes).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
PY="${PYTHON:-python3}"

# one interpreter in the usual case (everything importable): JAX's import is seconds on a cold machine
report='import jax, jaxmlm; print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())'
if ! "$PY" -c "$report" 2>/dev/null; then
  if ! "$PY" -c "import jax" >/dev/null 2>&1 && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl || echo "device.sh: installing .whl/ failed" >&2
  fi
  if ! "$PY" -c "import jaxmlm" >/dev/null 2>&1; then
    # the checkout itself, without fetching dependencies (the device machine has JAX, equinox, optax, numpyro,
    # pandas, scipy); if pip cannot install it, the checkout goes on the path
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
      || export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "$report" || { echo "device.sh: jax or jaxmlm cannot be imported" >&2; exit 2; }
fi
exec "$PY" benchmarks/device_run.py "$@"
