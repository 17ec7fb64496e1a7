import torch

from dgmerge.merging import task_vectors as tv

from .helpers import t


def test_task_vector_is_difference_in_compute_dtype():
    pre = {"w": t(1.0, 2.0).half(), "n": torch.tensor(1)}
    out = tv.task_vector(pre, {"w": t(1.5, 1.0).half(), "n": torch.tensor(2)})
    assert set(out) == {"w"} and out["w"].dtype == torch.float32
    assert out["w"].tolist() == [0.5, -1.0]


def test_elect_sign_by_mass_with_majority_for_zero_sums():
    stacked = t([[3.0, -1.0, 2.0, 1.0], [-1.0, -2.0, 4.0, -1.0]])
    # sums 2, -3, 6, 0 -> signs +, -, +, 0; majority of (+1 -1 +1) is +
    assert tv.elect_sign(stacked).tolist() == [1.0, -1.0, 1.0, 1.0]
    assert tv.elect_sign(stacked, majority=-1.0).tolist() == [1.0, -1.0, 1.0, -1.0]


def test_disjoint_mean_and_sum_count_only_agreeing_non_zero_entries():
    stacked = t([[3.0, -1.0, 0.0], [-1.0, -2.0, 0.0], [2.0, 0.0, 0.0]])
    sign = t(1.0, -1.0, 1.0)
    assert tv.disjoint_aggregate(stacked, sign).tolist() == [2.5, -1.5, 0.0]
    assert tv.disjoint_aggregate(stacked, sign, "sum").tolist() == [5.0, -3.0, 0.0]


def test_masked_mean_divides_by_survivors_and_is_zero_without_any():
    stacked = t([[3.0, -1.0, 5.0], [1.0, 4.0, 7.0]])
    mask = torch.tensor([[True, False, False], [True, True, False]])
    assert tv.masked_mean(stacked, mask).tolist() == [2.0, 4.0, 0.0]


def test_block_of_knows_the_usual_vit_names():
    assert tv.block_of("visual.transformer.resblocks.11.attn.in_proj_weight") == "visual.transformer.resblocks.11"
    assert tv.block_of("blocks.3.mlp.fc1.weight") == "blocks.3"
    assert tv.block_of("vit.encoder.layer.0.attention.attention.query.weight") == "vit.encoder.layer.0"
    assert tv.block_of("cls_token") is None


def test_layer_units_group_blocks_and_keep_other_keys_alone():
    keys = ["cls_token", "blocks.0.a", "blocks.0.b", "blocks.1.a", "norm.weight"]
    assert tv.layer_units(keys, "block") == {"cls_token": ["cls_token"], "blocks.0": ["blocks.0.a", "blocks.0.b"],
                                             "blocks.1": ["blocks.1.a"], "norm.weight": ["norm.weight"]}
    assert list(tv.layer_units(keys, "tensor")) == keys


def test_pieces_cover_every_entry_once():
    pre = {"a": torch.arange(7.0).view(7, 1), "b": torch.zeros(2)}
    ft = [{"a": pre["a"] * 2, "b": torch.ones(2)}]
    seen = [(k, p.start, p.stop, v.tolist()) for k, p, v in tv.task_vector_pieces(pre, ft, ["a", "b"], piece=3)]
    assert seen == [("a", 0, 3, [[0.0, 1.0, 2.0]]), ("a", 3, 6, [[3.0, 4.0, 5.0]]), ("a", 6, 7, [[6.0]]),
                    ("b", 0, 2, [[1.0, 1.0]])]


def test_derived_state_dict_computes_once_per_consecutive_key():
    calls = []
    view = tv.DerivedStateDict(["x", "y"], lambda k: calls.append(k) or t(1.0))
    view["x"], view["x"], view["y"]
    assert calls == ["x", "y"] and list(view) == ["x", "y"] and len(view) == 2
