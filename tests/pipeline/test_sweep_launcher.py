"""The SLURM launcher of `dgmerge sweep`: unfinished jobs as one submitit array, failures named with their logs.

submitit's LocalExecutor stands in for SLURM: it runs each job of the array in a subprocess
the way a SLURM node would (pickled function and config in, result pickle and logs out).
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

submitit = pytest.importorskip("submitit")

from dgmerge.cli.main import app  # noqa: E402
from dgmerge.config.sweep import SlurmSpec  # noqa: E402
from dgmerge.data.synthetic import generate_synthetic  # noqa: E402
from dgmerge.evaluation.results import read_results  # noqa: E402
from dgmerge.pipeline import sweep as sweep_module  # noqa: E402
from dgmerge.pipeline.sweep import SweepError, run_sweep, slurm_executor, slurm_parameters  # noqa: E402


def sweep_config(tmp_path: Path, grid: dict, **sweep: object) -> Path:
    """A sweep of tiny jobs on synthetic data (2 steps of a tiny CNN, one seed, one test domain)."""
    root = tmp_path / "data"
    if not root.exists():
        generate_synthetic(root, name="Shapes", domains=("solid", "outline", "noisy"), images_per_class=4, seed=0)
    config = {
        "output_dir": str(tmp_path / "sweep"), "seeds": [0], "methods": ["erm"],
        "data": {"root": str(root), "dataset": "Shapes", "test_domains": ["noisy"]},
        "backbone": {"kind": "tiny_cnn", "name": "tiny"},
        "probe": {"epochs": 2}, "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
        "sweep": {"grid": grid, "launcher": "slurm", **sweep},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class NoSubmissions(submitit.LocalExecutor):
    """An executor that fails the test if anything is submitted."""

    def _internal_process_submissions(self, delayed_submissions):
        raise AssertionError(f"submitted {len(delayed_submissions)} job(s) on a finished sweep")


def test_unfinished_jobs_run_as_an_array_and_a_rerun_submits_nothing(tmp_path):
    path = sweep_config(tmp_path, {"train.lr": [1e-4, 1e-3]})
    logs: list[str] = []
    root = run_sweep(path, log=logs.append, executor=submitit.LocalExecutor(folder=tmp_path / "logs"))
    jobs = sorted((root / "jobs").iterdir())
    assert len(jobs) == 2 and all((job / "done").exists() for job in jobs)
    for job in jobs:
        rows = read_results(job / "results.jsonl")
        assert [(r["method"], r["test_domain"]) for r in rows] == [("erm", "noisy")]
    assert sum(" done" in line and "job " in line for line in logs) == 2, logs

    rerun: list[str] = []
    run_sweep(path, log=rerun.append, executor=NoSubmissions(folder=tmp_path / "logs"))
    assert sum("done already" in line for line in rerun) == 2


def test_a_failing_job_is_named_with_its_log_and_the_command_fails(tmp_path, monkeypatch):
    # No dataset named Missing under data.root: validation passes, the job fails when it scans it.
    path = sweep_config(tmp_path, {"data.dataset": ["Missing"]})
    built = []

    def local_executor(slurm, root):
        built.append((slurm, root))
        return submitit.LocalExecutor(folder=tmp_path / "logs")

    monkeypatch.setattr(sweep_module, "slurm_executor", local_executor)
    result = CliRunner().invoke(app, ["sweep", str(path), "--launcher", "slurm", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert built and built[0][1] == tmp_path / "sweep"
    assert "1 of 1 job(s) failed" in result.output
    log = Path(result.output.split("log: ")[1].split()[0])
    assert log.is_file() and log.name.endswith("_log.err") and "Missing" in log.read_text()
    (job,) = (tmp_path / "sweep" / "jobs").iterdir()
    assert not (job / "done").exists()
    # --device reached the job's config without changing its folder (device is not in the key).
    assert json.loads((job / "config.json").read_text())["config"]["train"]["device"] == "cpu"


def test_device_and_launcher_flags_reach_every_job(tmp_path, monkeypatch):
    path = sweep_config(tmp_path, {"train.lr": [1e-4, 1e-3]})
    seen = []
    monkeypatch.setattr(sweep_module, "run_job", lambda cfg, overrides, log=print: seen.append(cfg))
    result = CliRunner().invoke(app, ["sweep", str(path), "--launcher", "local", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [cfg.train.device for cfg in seen] == ["cpu", "cpu"]
    folders = {cfg.output_dir for cfg in seen}
    seen.clear()
    assert CliRunner().invoke(app, ["sweep", str(path), "--launcher", "local"]).exit_code == 0
    assert [cfg.train.device for cfg in seen] == ["auto", "auto"] and {cfg.output_dir for cfg in seen} == folders
    bad = CliRunner().invoke(app, ["sweep", str(path), "--launcher", "local", "--device", "gpu"])
    assert bad.exit_code == 2 and "train.device" in bad.output


def test_slurm_options_become_submitit_parameters(tmp_path, monkeypatch):
    slurm = SlurmSpec(partition="gpu", account="lab", qos="high", time="1-12", gpus_per_node=1, cpus_per_task=8,
                      mem_gb=32, array_parallelism=4, constraint="a100",
                      additional_parameters={"mail-type": "END"})
    assert slurm_parameters(slurm) == {
        "name": "dgmerge-sweep", "timeout_min": 36 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32.0,
        "slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high", "slurm_constraint": "a100",
        "slurm_array_parallelism": 4, "slurm_additional_parameters": {"mail-type": "END"},
    }
    # submitit accepts every name (it refuses unknown ones) once it believes it is on a cluster.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = slurm_executor(slurm, tmp_path / "sweep")
    assert executor.folder == (tmp_path / "sweep" / "slurm").resolve()
    params = executor._executor.parameters  # the sbatch options submitit will write
    assert (params["partition"], params["time"], params["array_parallelism"]) == ("gpu", 36 * 60, 4)


def test_slurm_without_a_cluster_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(SweepError, match="SLURM"):
        slurm_executor(SlurmSpec(), tmp_path)


def test_slurm_without_submitit_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    with pytest.raises(SweepError, match=r'pip install "dgmerge\[slurm\]"'):
        slurm_executor(SlurmSpec(), tmp_path)
