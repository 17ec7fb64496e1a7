"""Tiny randomly initialised models saved in their real on-disk formats, for offline tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run, so CI cannot go red by chance; set
# DGMERGE_HYPOTHESIS=explore to draw fresh examples while hunting for counterexamples.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile("explore" if os.environ.get("DGMERGE_HYPOTHESIS") == "explore" else "fixed")

TINY_OPEN_CLIP = "dgmerge-test-tiny-vit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under a mutation run, the tests covering a mutant run fastest first (mutmut runs them with
    -x in no useful order, so a mutant a unit test kills in a second could wait minutes behind an
    end-to-end run). The durations are those mutmut recorded in its working directory."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


@pytest.fixture(scope="session")
def shared_root() -> Path | None:
    """shared/ beside the repository (or $DGMERGE_SHARED); None when it is not there."""
    env = os.environ.get("DGMERGE_SHARED")
    # tests/conftest.py -> parents[1] is the repository root; shared/ is its sibling.
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory):
    """(model name, reference model, checkpoint path) of a registered tiny open_clip ViT."""
    import open_clip

    config_dir = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (config_dir / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OPEN_CLIP).eval()
    # Saved the way training scripts save: nested under "state_dict", DataParallel prefixes.
    checkpoint = config_dir / "tiny_open_clip.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    return TINY_OPEN_CLIP, model, checkpoint


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory: pytest.TempPathFactory):
    """(directory, reference CLIPModel, tokenizer) of a tiny transformers CLIP saved with
    save_pretrained, with a byte-level BPE tokenizer (no merges) saved beside it."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("hf_clip")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    tokenizer.save_pretrained(directory)
    special = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    return directory, model, tokenizer


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated DomainBed-layout dataset root: Shapes with domains solid, outline, noisy (6 images per class)."""
    from dgmerge.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic(root, name="Shapes", domains=("solid", "outline", "noisy"), images_per_class=6, seed=0)
    return root


def tiny_cnn_logits_by_hand(raw: dict[str, torch.Tensor], inputs: torch.Tensor, linear: str,
                            first_block: int = 0) -> torch.Tensor:
    """A saved tiny_cnn's logits from its raw file tensors, with torch.nn.functional only (a
    reference sharing no code with dgmerge's models): from block `first_block` on, conv3x3 → BN
    (running statistics) → ReLU → 2×2 max-pool per block, global mean, then the linear layer whose
    tensors are `<linear>.weight` / `<linear>.bias` ("head.linear" for a classifier, "linear" for a gate)."""
    from torch.nn import functional as F

    x = inputs
    for block in range(first_block, 4):
        p = f"encoder.blocks.{block}."
        x = F.conv2d(x, raw[p + "0.weight"], padding=1)
        x = F.batch_norm(x, raw[p + "1.running_mean"], raw[p + "1.running_var"], raw[p + "1.weight"],
                         raw[p + "1.bias"], training=False, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.mean(dim=(2, 3)), raw[f"{linear}.weight"], raw[f"{linear}.bias"])


@pytest.fixture(scope="session")
def tiny_cnn_by_hand():
    """tiny_cnn_logits_by_hand as a fixture: test modules cannot import conftest."""
    return tiny_cnn_logits_by_hand
