"""The shipped paper configs: the HAM paper's search space, seeds and training setting, per dataset."""

import itertools
from pathlib import Path

import pytest

from dgmerge.config import can_reuse, load_config, load_sweep
from dgmerge.data.registry import DATASETS
from dgmerge.methods import experiment_names
from dgmerge.pipeline.sweep import plan_jobs

PAPER = {"pacs": "PACS", "vlcs": "VLCS", "officehome": "OfficeHome", "terraincognita": "TerraIncognita",
         "domainnet": "DomainNet"}


@pytest.mark.parametrize("slug", sorted(PAPER))
def test_paper_sweep_covers_the_papers_space_with_three_ham_trainings_per_job(slug):
    base, spec = load_sweep(Path(f"paper_clip_{slug}.yaml"))
    jobs = plan_jobs(base, spec)
    grid = {(cfg.train.steps, cfg.train.lr) for _, cfg in jobs}
    assert grid == set(itertools.product([500, 3000, 5000, 10000], [5e-6, 1e-5]))
    cfg = jobs[0][1]
    assert cfg.data.dataset == PAPER[slug] in DATASETS
    assert cfg.seeds == [41, 42, 43] and cfg.train.batch_size == 24 and cfg.train.weight_decay == 0.1
    assert (cfg.backbone.kind, cfg.backbone.name, cfg.backbone.pretrained) == ("open_clip", "ViT-B-16", "openai")
    assert cfg.train.trainable == "all" and cfg.data.train_augment
    assert set(cfg.methods) <= set(experiment_names()) and {"ham", "ham_variants", "erm"} <= set(cfg.methods)
    # The paper's HAM: plain τ_i from step 1, no cap, β = 0.5, RHM.
    ham = cfg.ham
    assert (ham.sae_rule, ham.sae_warmup_steps, ham.sae_max_borrow, ham.beta, ham.merge_method) == \
        ("mean", 0, None, 0.5, "rhm")
    points = [cfg.ham] + [cfg.variant_config(v) for v in cfg.ham_variants]
    assert all(v.tuning for v in cfg.ham_variants)
    assert {(p.opa_weight, p.merge_hparams["trim"]) for p in points} == \
        set(itertools.product([0.1, 0.5, 1.0], [0.2, 0.4, 0.6, 0.8]))
    trainings: list = []
    for point in points:
        if not any(can_reuse(point, t) for t in trainings):
            trainings.append(point)
    assert len(trainings) == 3  # one per λ: every r reuses its λ's training


def test_the_clip_config_runs_ham():
    cfg = load_config("clip_vitb16_openclip", methods=experiment_names())
    assert "ham" in cfg.methods and cfg.ham.sae_rule == "mean" and cfg.ham.merge_hparams == {"trim": 0.2}
