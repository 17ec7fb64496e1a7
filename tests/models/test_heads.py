"""Zero-shot and linear heads."""

from __future__ import annotations

import math

import pytest
import torch

from dgmerge.models.heads import LinearHead, ZeroShotHead, average_prompt_embeddings, build_linear_head


def test_zero_shot_logits_are_scaled_cosines_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # second row not unit length on purpose
    head = ZeroShotHead(embeddings, logit_scale=math.log(10.0))
    features = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cos([3,0],[1,0]) = 1, cos([3,0],[0,1]) = 0; cos([1,1],·) = 1/sqrt(2) for both classes.
    expected = 10.0 * torch.tensor([[1.0, 0.0], [2 ** -0.5, 2 ** -0.5]])
    torch.testing.assert_close(head(features), expected)


def test_zero_shot_head_has_buffers_not_parameters():
    head = ZeroShotHead(torch.randn(3, 4), logit_scale=torch.tensor([4.6052]))
    assert list(head.parameters()) == []
    assert set(dict(head.named_buffers())) == {"class_embeddings", "logit_scale"}
    assert head.logit_scale.shape == ()
    assert head.num_classes == 3
    torch.testing.assert_close(head.class_embeddings.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="num_classes, dim"):
        ZeroShotHead(torch.randn(4))


def test_prompt_embeddings_average_templates_and_replace_underscores():
    seen: list[list[str]] = []
    # Two templates map to orthogonal unit vectors, so the class embedding is their normalised mean.
    table = {"a photo of a tennis racket.": [1.0, 0.0, 0.0], "art of a tennis racket": [0.0, 3.0, 0.0],
             "a photo of a dog.": [0.0, 0.0, 2.0], "art of a dog": [0.0, 0.0, 5.0]}

    def encode(prompts: list[str]) -> torch.Tensor:
        seen.append(prompts)
        return torch.tensor([table[p] for p in prompts])

    out = average_prompt_embeddings(encode, ["tennis_racket", "dog"], ["a photo of a {}.", "art of a {}"])
    assert seen == [["a photo of a tennis racket.", "art of a tennis racket"], ["a photo of a dog.", "art of a dog"]]
    torch.testing.assert_close(out, torch.tensor([[2 ** -0.5, 2 ** -0.5, 0.0], [0.0, 0.0, 1.0]]))


def test_prompt_embeddings_need_classes_and_templates():
    with pytest.raises(ValueError, match="class name"):
        average_prompt_embeddings(lambda p: torch.zeros(len(p), 2), [], ["{}"])
    with pytest.raises(ValueError, match="template"):
        average_prompt_embeddings(lambda p: torch.zeros(len(p), 2), ["a"], [])


def test_linear_head_and_seeded_builder():
    head = build_linear_head(8, 3, seed=5)
    assert isinstance(head, LinearHead) and head.num_classes == 3
    assert set(head.state_dict()) == {"linear.weight", "linear.bias"}  # the pipeline loads these keys
    assert head(torch.randn(2, 8)).shape == (2, 3)
    state = torch.random.get_rng_state()
    again = build_linear_head(8, 3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    torch.testing.assert_close(head.linear.weight, again.linear.weight)
