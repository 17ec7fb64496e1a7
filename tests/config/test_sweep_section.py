"""The sweep section: grid and space values reach the experiment field their dotted key names as typed."""

import re
from pathlib import Path

import pytest

from dgmerge.config import ConfigError, SweepSpec, load_sweep, set_dotted, validate_config


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text("output_dir: runs/s\ntrain: {steps: 5}\n" + text)
    return path


def test_grid_values_are_typed_by_the_field_they_set(tmp_path):
    base, spec = load_sweep(sweep_file(tmp_path, "sweep:\n  grid:\n    train.feature_cache: [off, memory]\n"
                                                 "    ham.sae: [on, off]\n    data.test_domains: [[2007], [art]]\n"
                                                 "    train.lr: [1e-4, 3e-4]\n    ham.merge_hparams.trim: [2e-1]\n"))
    assert spec.grid == {"train.feature_cache": ["off", "memory"], "ham.sae": [True, False],
                         "data.test_domains": [["2007"], ["art"]], "train.lr": [1e-4, 3e-4],
                         "ham.merge_hparams.trim": [0.2]}
    raw = dict(base)
    set_dotted(raw, "train.feature_cache", spec.grid["train.feature_cache"][0])
    assert validate_config(raw).train.feature_cache == "off"


def test_space_values_are_typed_and_named_spaces_stay_names(tmp_path):
    _, spec = load_sweep(sweep_file(tmp_path, "sweep:\n  trials: 2\n  space: {train.feature_cache: [off, disk]}\n"))
    assert spec.space == {"train.feature_cache": ["off", "disk"]} and spec.trials == 2
    _, named = load_sweep(sweep_file(tmp_path, "sweep: {trials: 1, space: ham, seed: 0x2}\n"))
    assert (named.space, named.seed) == ("ham", 2)


def test_bad_sweep_sections_name_the_file(tmp_path):
    for text in ("sweep: {grid: {train.lr: []}}\n", "sweep: 3\n", "sweep: {trails: 2}\n"):
        with pytest.raises(ConfigError, match="invalid sweep section"):
            load_sweep(sweep_file(tmp_path, text))


def test_schema_is_the_one_the_pipeline_uses():
    from dgmerge.pipeline import sweep

    assert sweep.SweepSpec is SweepSpec and sweep.load_sweep is load_sweep


def test_slurm_section_reads_sbatch_options(tmp_path):
    _, spec = load_sweep(sweep_file(tmp_path, "sweep:\n  launcher: slurm\n  slurm:\n    partition: gpu\n"
                                                 "    account: lab\n    qos: high\n    time: 4:00:00\n"
                                                 "    gpus_per_node: 1\n    cpus_per_task: 8\n    mem_gb: 32\n"
                                                 "    array_parallelism: 4\n    constraint: a100\n"
                                                 "    folder: logs/slurm\n"
                                                 "    additional_parameters: {mail-type: END, exclusive: true}\n"))
    slurm = spec.slurm
    assert spec.launcher == "slurm"
    # `4:00:00` stays text (YAML 1.1 would read the base-60 number 14400) and means four hours.
    assert (slurm.time, slurm.timeout_min) == ("4:00:00", 240)
    assert (slurm.partition, slurm.account, slurm.qos, slurm.constraint) == ("gpu", "lab", "high", "a100")
    assert (slurm.gpus_per_node, slurm.cpus_per_task, slurm.mem_gb, slurm.array_parallelism) == (1, 8, 32.0, 4)
    assert slurm.folder == Path("logs/slurm")
    assert slurm.additional_parameters == {"mail-type": "END", "exclusive": True}


def test_launcher_defaults_to_local_with_a_long_enough_slurm_time(tmp_path):
    _, spec = load_sweep(sweep_file(tmp_path, "sweep: {grid: {train.lr: [1e-4]}}\n"))
    assert spec.launcher == "local" and spec.slurm.folder is None and spec.slurm.timeout_min == 240
    assert SweepSpec(slurm={"time": 90}).slurm.timeout_min == 90
    assert [SweepSpec(slurm={"time": t}).slurm.timeout_min for t in ("30", "1-12", "1-0:30", "0:0:30")] == \
        [30, 36 * 60, 24 * 60 + 30, 1]


@pytest.mark.parametrize("text, field", [
    ("launcher: pbs", "launcher"),
    ("slurm: {partitions: gpu}", "slurm.partitions"),
    ("slurm: {time: 0}", "slurm.time"),
    ("slurm: {time: 4h}", "slurm.time"),
    ("slurm: {gpus_per_node: -1}", "slurm.gpus_per_node"),
    ("slurm: {cpus_per_task: 0}", "slurm.cpus_per_task"),
    ("slurm: {mem_gb: 0}", "slurm.mem_gb"),
    ("slurm: {array_parallelism: 0}", "slurm.array_parallelism"),
    ("slurm: {partition: ''}", "slurm.partition"),
    ("slurm: {additional_parameters: [a]}", "slurm.additional_parameters"),
    ("slurm: 3", "slurm"),
])
def test_bad_slurm_settings_are_refused_by_name(tmp_path, text, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_sweep(sweep_file(tmp_path, f"sweep:\n  {text}\n"))
