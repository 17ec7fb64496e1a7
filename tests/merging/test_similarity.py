import math

import pytest
import torch

from dgmerge.merging import MergeError, least_similar_modules, module_similarities
from dgmerge.merging.similarity import module_kind, pairwise_cosine_sum


def test_eq4_pairwise_cosine_sum_by_hand():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    # cos(a,b) = 0, cos(a,c) = cos(b,c) = 1/√2
    assert pairwise_cosine_sum([[a], [b], [c]]) == pytest.approx(math.sqrt(2))


def block(qkv, proj, fc1, fc2, b=0):
    p = f"blocks.{b}."
    return {p + "attn.qkv.weight": torch.tensor([qkv]), p + "attn.proj.weight": torch.tensor([proj]),
            p + "mlp.fc1.weight": torch.tensor([fc1]), p + "mlp.fc2.weight": torch.tensor([fc2]),
            p + "norm1.weight": torch.ones(2)}


def test_concat_layers_combined_ffn_by_hand():
    m1 = {**block([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]), **block([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], b=1)}
    m2 = {**block([0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]), **block([1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], b=1)}
    sims = {s.name: s.similarity for s in module_similarities([m1, m2])}
    # block 0 attention: concat [1,0,1,0] vs [0,1,1,0] -> 1/2; MLP identical -> 1
    # block 1 attention identical -> 1; MLP [1,0,1,0] vs [0,1,0,1] -> 0
    assert sims == pytest.approx({"blocks.0.attention": 0.5, "blocks.0.mlp": 1.0,
                                  "blocks.1.attention": 1.0, "blocks.1.mlp": 0.0})
    separate = {s.name: s.similarity for s in module_similarities([m1, m2], attention="separate")}
    assert separate["blocks.0.attention"] == pytest.approx(1.0)  # 0 + 1
    split = {s.name: s.similarity for s in module_similarities([m1, m2], mlp="separate")}
    assert split["blocks.1.mlp.fc1"] == pytest.approx(0.0) and split["blocks.0.mlp.fc2"] == pytest.approx(1.0)
    low = least_similar_modules([m1, m2], m=1)
    assert [s.name for s in low["attention"]] == ["blocks.0.attention"]
    assert [s.name for s in low["mlp"]] == ["blocks.1.mlp"]


def test_task_vector_option_and_errors():
    m1 = block([2.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0])
    m2 = block([1.0, 2.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0])
    pre = block([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    sims = {s.name: s.similarity for s in module_similarities([m1, m2], pretrained=pre)}
    # attention task vectors [1,0,1,0] vs [0,1,1,0] -> 1/2
    assert sims["blocks.0.attention"] == pytest.approx(0.5)
    with pytest.raises(MergeError, match="at least two"):
        module_similarities([m1])


@pytest.mark.parametrize("key, kind", [
    ("visual.transformer.resblocks.0.attn.in_proj_weight", "attention"),
    ("visual.transformer.resblocks.0.attn.out_proj.weight", "attention"),
    ("visual.transformer.resblocks.0.mlp.c_fc.weight", "mlp"),
    ("visual.transformer.resblocks.0.mlp.c_proj.weight", "mlp"),
    ("vit.encoder.layer.3.attention.output.dense.weight", "attention"),
    ("vit.encoder.layer.3.intermediate.dense.weight", "mlp"),
    ("vit.encoder.layer.3.output.dense.weight", "mlp"),
    ("visual.transformer.resblocks.0.ln_1.weight", None),
    ("visual.proj", None),
])
def test_module_kind_for_open_clip_and_hf_names(key, kind):
    assert module_kind(key) == kind
