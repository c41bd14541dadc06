"""benchmarks/device.sh at its tiny sizes on the CPU: every workload runs and lands in the results file, so
that the accelerator run cannot fail for a trivial reason when a device is at hand.

The tiny scale runs the code of the small and the full scale (the same runners, the same size keys: checked
below) on fewer rows, groups, responses and datasets; each workload's compiles are the cost either way (its process is
forked from one that has imported JAX and jaxmlm), and the small sizes cost nearly twice the CPU time (their
iterative fit most)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_script_tiny_scale(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.device_run import WORKLOADS

    for name, (sizes, _) in WORKLOADS.items():  # every scale sizes the same parameters of a workload
        assert set(sizes) == {"full", "small", "tiny"} and set(sizes["tiny"]) == set(sizes["small"]) == set(
            sizes["full"]), name
    out = tmp_path / "results.jsonl"
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device.sh"), "--scale", "tiny", "--out", str(out),
                           "--budget", "900"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend cpu" in proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["workload"] == "_environment" and records[0]["backend"] == "cpu"
    by_name = {r["workload"]: r for r in records[1:]}
    assert list(by_name) == list(WORKLOADS)
    for name, record in by_name.items():
        assert record["status"] == "ok", f"{name}: {record.get('error')}"
        assert record["scale"] == "tiny" and record["backend"] == "cpu"
        assert math.isfinite(record["objective"]), name
        assert record["seconds"] and all(math.isfinite(s) and s >= 0 for s in record["seconds"].values())
    assert by_name["slope_10m_1m"]["objective_warm"] == pytest.approx(by_name["slope_10m_1m"]["objective"], rel=1e-9)
    # the direct and the iterative path fit the same model: the iterative objective carries its estimate's error
    direct, iterative = by_name["ml32m_direct"], by_name["ml32m_iterative"]
    assert iterative["objective"] == pytest.approx(direct["objective"], abs=6 * iterative["objective_se"] + 1e-6)
    assert by_name["groups_1000"]["converged"] == by_name["groups_1000"]["datasets"]
    assert by_name["xbox_mrp"]["states"] == 51


def test_device_script_refuses_unknown_workload(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_run.py"), "--only", "nope",
                           "--out", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown workload" in proc.stderr


def test_a_failing_workload_is_recorded_with_its_error(tmp_path):
    """A workload that raises gives a 'failed' record with the last lines of its traceback; the run goes on."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import device_run

    record = device_run.run_one("no_such_workload", "tiny", 120.0, device_run._processes())
    assert record["status"] == "failed" and record["returncode"] != 0
    assert "KeyError: 'no_such_workload'" in record["error"]
