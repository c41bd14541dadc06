"""Rows sharded across devices (8 fake CPU devices) and across two processes (jax.distributed on localhost) give
the same statistics, and the same fit, as one device. Each check runs in a fresh subprocess because the device
count and the distributed runtime are fixed when JAX starts."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

FAKE_DEVICES = textwrap.dedent(
    """
    import json, os
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)  # the core is called directly below: float64 is the caller's to set
    import jaxmlm as jm
    from jaxmlm.core._lmm import fit_linear
    from jaxmlm.core._shard import row_mesh, sharded_linear_problem

    out = {"devices": len(jax.devices())}
    for name, data, formula in [
        ("crossed", "Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)"),
        ("slope", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ]:
        m = jm.Model(formula, jm.datasets.load(data))
        d = m.design
        ref = m.linear_problem
        sh = sharded_linear_problem(m.structure, m.rows, d.weights, d.X, d.y - d.offset, row_mesh())
        rel = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (1.0 + np.max(np.abs(np.asarray(b)))))
            for a, b in zip(jax.tree.leaves(sh.blocks), jax.tree.leaves(ref.blocks)) if np.size(b)
        )
        th0 = m.theta_start()
        f_ref = fit_linear(th0, ref, False)
        f_sh = fit_linear(th0, sh, False)
        out[name] = dict(rel=rel, n=[int(sh.n), int(ref.n)], theta=[np.asarray(f_sh.x).tolist(), np.asarray(f_ref.x).tolist()],
                         value=[float(f_sh.value), float(f_ref.value)])
    print("RESULT" + json.dumps(out))
    """
)

TWO_PROCESSES = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)  # the core is called directly below: float64 is the caller's to set
    port, pid = sys.argv[1], int(sys.argv[2])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    import jaxmlm as jm
    from jaxmlm.core._shard import distributed_cross_products

    m = jm.Model("diameter ~ 1 + (1|plate) + (1|sample)", jm.datasets.load("Penicillin"))
    d = m.design
    half = (d.n + 1) // 2
    rows = slice(0, half) if pid == 0 else slice(half, d.n)   # each process holds only its own rows
    local = jax.tree.map(lambda x: np.asarray(x)[rows], m.rows)
    F = np.concatenate([d.X, (d.y - d.offset)[:, None]], axis=1)[rows]
    blocks = distributed_cross_products(m.structure, local, d.weights[rows], F, rows_per_process=half)
    ref = m.linear_problem.blocks
    rel = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (1.0 + np.max(np.abs(np.asarray(b)))))
        for a, b in zip(jax.tree.leaves(blocks), jax.tree.leaves(ref)) if np.size(b)
    )
    print("RESULT" + json.dumps({"pid": pid, "processes": jax.process_count(), "devices": len(jax.devices()),
                                 "rel": rel}))
    """
)


def _result(stdout: str) -> dict:
    line = next((l for l in stdout.splitlines() if l.startswith("RESULT")), None)
    assert line is not None, stdout[-2000:]
    return json.loads(line[len("RESULT"):])


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def test_eight_devices_give_the_single_device_statistics_and_fit(tmp_path):
    script = tmp_path / "fake_devices.py"
    script.write_text(FAKE_DEVICES)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _result(proc.stdout)
    assert out["devices"] == 8
    for name in ("crossed", "slope"):
        r = out[name]
        assert r["rel"] < 1e-12, (name, r["rel"])
        assert r["n"][0] == r["n"][1]  # padding rows (weight 0) are not observations
        assert r["value"][0] == pytest.approx(r["value"][1], rel=1e-10)
        assert r["theta"][0] == pytest.approx(r["theta"][1], rel=1e-6, abs=1e-8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_give_the_same_statistics(tmp_path):
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESSES)
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(script), port, str(pid)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
        for pid in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for out in outs:
        assert out["processes"] == 2 and out["devices"] == 2
        assert out["rel"] < 1e-12
