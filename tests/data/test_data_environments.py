"""Leave-one-domain-out environments: the held-out domain never feeds training or selection."""

from pathlib import Path

import pytest

from dgmerge.data.environments import DataLeakError, make_environments, subsample
from dgmerge.data.imagefolder import scan_domains
from dgmerge.data.splits import seed_hash, split_in_out

LAYOUT = {"art": {"cat": 12, "dog": 8}, "photo": {"cat": 10, "dog": 15}, "sketch": {"cat": 9, "dog": 11}}


@pytest.fixture
def index(make_tree):
    return scan_domains(make_tree(LAYOUT))


def _training_paths(envs) -> list[Path]:
    return [p for lists in (envs.train_in, envs.train_out) for samples in lists.values() for p, _ in samples]


@pytest.mark.parametrize("test_domain", ["art", "photo", "sketch"])
def test_target_domain_never_in_training_or_selection(index, test_domain):
    envs = make_environments(index, test_domain, trial_seed=0)
    envs.check_no_leak()
    assert test_domain not in envs.sources and set(envs.sources) == set(index.domains) - {test_domain}
    used = _training_paths(envs)
    # Independent of check_no_leak: judged by the files' location on disk.
    assert used and not [p for p in used if p.parent.parent.name == test_domain]
    assert {p for p, _ in envs.test} == {p for p, _ in index.samples[test_domain]}
    for domain in envs.sources:
        n = len(index.samples[domain])
        assert len(envs.train_out[domain]) == int(n * 0.2)
        both = envs.train_in[domain] + envs.train_out[domain]
        assert sorted(both) == sorted(index.samples[domain])


def test_check_no_leak_catches_a_test_image_in_a_source_list(index):
    envs = make_environments(index, "sketch", trial_seed=0)
    envs.train_out["photo"].append(envs.test[0])
    with pytest.raises(DataLeakError, match="test-domain image .*sketch"):
        envs.check_no_leak()
    envs = make_environments(index, "sketch", trial_seed=0)
    envs.train_in["sketch"] = envs.test_in
    with pytest.raises(DataLeakError):
        envs.check_no_leak()
    envs = make_environments(index, "sketch", trial_seed=0)
    envs.train_in["art"] = envs.train_in["art"] + envs.train_out["art"][:1]
    with pytest.raises(DataLeakError, match="both its in and out"):
        envs.check_no_leak()


def test_splits_are_domainbed_seeded_and_stable(index):
    a = make_environments(index, "sketch", trial_seed=3)
    b = make_environments(index, "sketch", trial_seed=3)
    assert a.train_in == b.train_in and a.train_out == b.train_out and a.test_in == b.test_in
    # Same indices as DomainBed's split_dataset with seed_hash(trial_seed, env index).
    samples = index.samples["photo"]
    in_idx, out_idx = split_in_out(len(samples), 0.2, seed_hash(3, 1))
    assert a.train_out["photo"] == [samples[i] for i in out_idx]
    assert a.train_in["photo"] == [samples[i] for i in in_idx]
    # A source's split does not depend on which domain is held out.
    assert make_environments(index, "art", trial_seed=3).train_in["photo"] == a.train_in["photo"]
    assert make_environments(index, "sketch", trial_seed=4).train_in["photo"] != a.train_in["photo"]


def test_test_domain_has_its_own_in_out_split(index):
    envs = make_environments(index, "sketch", trial_seed=0)
    assert len(envs.test_out) == int(20 * 0.2) and len(envs.test_in) == 20 - int(20 * 0.2)
    assert sorted(envs.test_in + envs.test_out) == sorted(envs.test)
    assert envs.test_samples("full") == envs.test and envs.test_samples("out") == envs.test_out


def test_max_images_subsamples_deterministically_and_stratified(index):
    envs = make_environments(index, "sketch", trial_seed=0, max_images_per_domain=10)
    again = make_environments(index, "sketch", trial_seed=0, max_images_per_domain=10)
    other_seed = make_environments(index, "sketch", trial_seed=1, max_images_per_domain=10)
    assert envs.train_in == again.train_in
    for domain in envs.sources:
        pool = envs.train_in[domain] + envs.train_out[domain]
        assert len(pool) == 10 and len(envs.train_out[domain]) == 2
        # The subsample is the same for every trial seed; only the split moves.
        assert sorted(pool) == sorted(other_seed.train_in[domain] + other_seed.train_out[domain])
    photo = sorted(envs.train_in["photo"] + envs.train_out["photo"])
    assert sum(1 for _, y in photo if y == 0) == 4  # 10 of 25 keeps 4 of the 10 cats
    assert len(envs.test) == 10 and envs.test == sorted(envs.test)


def test_subsample_keeps_class_proportions():
    samples = [(Path(f"{y}/{i}.png"), y) for y, n in enumerate([600, 300, 100]) for i in range(n)]
    kept = subsample(samples, 100, seed=5)
    assert [sum(1 for _, y in kept if y == c) for c in range(3)] == [60, 30, 10]
    assert kept == subsample(samples, 100, seed=5) and kept != subsample(samples, 100, seed=6)
    assert subsample(samples, 5000, seed=0) == samples


def test_unknown_test_domain_lists_valid_ones(index):
    with pytest.raises(ValueError, match="valid domains: art, photo, sketch"):
        make_environments(index, "watercolor", trial_seed=0)
