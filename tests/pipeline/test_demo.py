"""The demo pipeline end to end on a very small generated dataset."""

from dgmerge.evaluation.results import read_results
from dgmerge.pipeline import demo


def test_demo_generates_pretrains_runs_and_tabulates(tmp_path):
    cfg = demo.synthetic_config(tmp_path / "demo", steps=2)
    cfg.data.test_domains = ["outline"]
    cfg.probe.epochs = 2
    demo.prepare_synthetic(cfg, images_per_class=4, pretrain_steps=3, log=lambda _: None)
    assert (tmp_path / "demo" / "pretrained.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "demo" / "data" / "Shapes").iterdir()) == [
        "cartoon", "noisy", "outline", "solid"]

    table = demo.run_demo(cfg, log=lambda _: None)
    for method in ("linear_probe", "erm", "source:solid", "single_source_mean", "merge:average"):
        assert f"| {method} |" in table
    assert (tmp_path / "demo" / "report.md").read_text() == table
    rows = read_results(tmp_path / "demo" / "results.jsonl")
    # θ0 was pretrained on a separate domain: every row records the same checkpoint.
    assert {r["hparams"]["backbone"]["checkpoint"] for r in rows} == {str(tmp_path / "demo" / "pretrained.safetensors")}

    # Preparing again reuses the data and θ0 instead of regenerating them.
    stamp = (tmp_path / "demo" / "pretrained.safetensors").stat().st_mtime_ns
    demo.prepare_synthetic(cfg, images_per_class=4, pretrain_steps=3, log=lambda _: None)
    assert (tmp_path / "demo" / "pretrained.safetensors").stat().st_mtime_ns == stamp
