"""Hugging Face transformers CLIP: vision tower + projection as encoder, text tower as head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.factory import register_loader
from dgmerge.models.heads import ZeroShotHead, average_prompt_embeddings
from dgmerge.models.structure import resize_crop_normalize

# CLIP's own normalisation, used when the directory has no preprocessor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFCLIPImageEncoder(nn.Module):
    """images [B, 3, H, W] -> projected image embeddings [B, projection_dim] (not normalised)."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=images).pooler_output)


@register_loader("hf_clip")
def load_hf_clip(cfg: BackboneSpec) -> Backbone:
    """`CLIPModel.from_pretrained` on cfg.checkpoint (a local directory) or cfg.name (hub id or
    directory); the tokenizer and image processor come from the same place."""
    from transformers import CLIPModel, CLIPTokenizer

    source = str(cfg.checkpoint) if cfg.checkpoint is not None else cfg.name
    local = Path(source).expanduser().exists()
    if cfg.checkpoint is not None and not local:
        raise FileNotFoundError(f"hf_clip checkpoint directory {source} does not exist")
    # A local directory must never fall back to the hub (offline machines, typos in paths).
    hub_kwargs = {"local_files_only": True} if local else {}
    model = CLIPModel.from_pretrained(source, **cfg.model_kwargs, **hub_kwargs)
    model.eval()
    model.requires_grad_(False)
    encoder = HFCLIPImageEncoder(model.vision_model, model.visual_projection)
    encoder.requires_grad_(True)  # only φ (vision tower + projection) is trainable
    tokenizer = CLIPTokenizer.from_pretrained(source, **hub_kwargs)

    image_size, mean, std, interpolation = _preprocess_settings(source, model, cfg, hub_kwargs)
    layers = model.vision_model.encoder.layers
    return Backbone(
        kind="hf_clip", name=cfg.name, encoder=encoder, feature_dim=int(model.config.projection_dim),
        image_size=image_size, mean=mean, std=std,
        blocks=[f"vision_model.encoder.layers.{i}" for i in range(len(layers))],
        tail=["vision_model.post_layernorm", "visual_projection"],
        text_head=make_text_head_builder(model, tokenizer),
        eval_transform=resize_crop_normalize(image_size, mean, std, interpolation),
    )


def make_text_head_builder(model: nn.Module, tokenizer: Any):
    """(class names, templates) -> ZeroShotHead from the CLIPModel's frozen text tower."""

    def encode(prompts: list[str]) -> torch.Tensor:
        device = next(model.text_model.parameters()).device
        batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        pooled = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        return model.text_projection(pooled)

    def build(class_names: list[str], templates: list[str]) -> ZeroShotHead:
        was_training = model.text_model.training
        model.text_model.eval()
        try:
            embeddings = average_prompt_embeddings(encode, class_names, templates)
        finally:
            model.text_model.train(was_training)
        return ZeroShotHead(embeddings, model.logit_scale.detach().float().cpu().clone())

    return build


def _preprocess_settings(source: str, model: nn.Module, cfg: BackboneSpec,
                         hub_kwargs: dict[str, Any]) -> tuple[int, tuple, tuple, str]:
    """(image_size, mean, std, interpolation): cfg overrides, else the saved image processor,
    else CLIP's defaults at the vision config's resolution."""
    from transformers import CLIPImageProcessor

    image_size = int(model.config.vision_config.image_size)
    mean, std, interpolation = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic"
    try:
        processor = CLIPImageProcessor.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError):  # no preprocessor_config.json: keep CLIP's defaults
        processor = None
    if processor is not None:
        mean = tuple(processor.image_mean or mean)
        std = tuple(processor.image_std or std)
        image_size = _edge(getattr(processor, "crop_size", None), image_size)
        # PIL resample codes: 2 = bilinear, 3 = bicubic.
        interpolation = {2: "bilinear", 3: "bicubic"}.get(int(getattr(processor, "resample", 3) or 3), "bicubic")
    return (cfg.image_size or image_size, tuple(cfg.mean or mean), tuple(cfg.std or std), interpolation)


def _edge(size: Any, default: int) -> int:
    # crop_size is an int, a dict or (transformers 5) a SizeDict depending on the version.
    if size is None:
        return default
    if isinstance(size, (int, float)):
        return int(size)
    for key in ("height", "shortest_edge"):
        value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
        if value:
            return int(value)
    return default
