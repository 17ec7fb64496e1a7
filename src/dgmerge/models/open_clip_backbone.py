"""open_clip CLIP models: the visual tower as encoder, the frozen text tower as zero-shot head."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.factory import register_loader
from dgmerge.models.heads import ZeroShotHead, average_prompt_embeddings
from dgmerge.files import StateDict, read_state_dict
from dgmerge.models.fit_weights import load_strict
from dgmerge.models.structure import find_blocks, find_tail

# Parts of open_clip's VisionTransformer after its residual blocks, in forward order. proj is
# an nn.Parameter, not a module; the classifier's `name == prefix` match still selects it.
VIT_TAIL = ("attn_pool", "attn_pool_contrastive", "ln_post", "proj", "head")
# Non-tensor scalars that OpenAI's TorchScript checkpoints keep in their state dict.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


@register_loader("open_clip")
def load_open_clip(cfg: BackboneSpec) -> Backbone:
    """open_clip model `cfg.name` with weights from a local file or a pretrained tag.

    cfg.checkpoint, or cfg.pretrained naming an existing file, is loaded strictly (nested
    "state_dict" and "module." prefixes are handled); otherwise cfg.pretrained is an
    open_clip tag (e.g. "openai") fetched from its hub.
    """
    import open_clip

    checkpoint = local_checkpoint(cfg)
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    if cfg.image_size is not None:
        kwargs.setdefault("force_image_size", cfg.image_size)
    if checkpoint is not None:
        with _quiet_random_init_warning():
            model = open_clip.create_model(cfg.name, pretrained=None, **kwargs)
        load_strict(model, adapt_state_dict(model, read_state_dict(checkpoint)), source=str(checkpoint))
    else:
        model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    model.eval()
    # Only φ trains: the text tower is frozen and shared by every fine-tuned model.
    for name, param in model.named_parameters():
        if not name.startswith("visual."):
            param.requires_grad_(False)

    visual = model.visual
    preprocess, mean, std = _eval_preprocess(visual, cfg)
    blocks, tail = visual_structure(visual)
    return Backbone(
        kind="open_clip", name=cfg.name, encoder=visual, feature_dim=_embed_dim(model),
        image_size=_as_int(getattr(visual, "image_size", None) or cfg.image_size or 224),
        mean=mean, std=std, blocks=blocks, tail=tail,
        text_head=make_text_head_builder(model, open_clip.get_tokenizer(cfg.name)),
        eval_transform=preprocess,
    )


def local_checkpoint(cfg: BackboneSpec) -> Path | None:
    """cfg.checkpoint, or cfg.pretrained when it is a path to an existing file; else None."""
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    if cfg.pretrained and Path(cfg.pretrained).expanduser().is_file():
        return Path(cfg.pretrained).expanduser()
    return None


def adapt_state_dict(model: nn.Module, state: StateDict) -> StateDict:
    """Apply open_clip's own checkpoint fix-ups (third-party layouts, old text layout, scalar
    logit_scale, position-embedding resizing) so local files load like hub weights do."""
    from open_clip.factory import convert_state_dict, convert_to_custom_text_state_dict, resize_pos_embed

    for key in _JIT_EXTRAS:
        state.pop(key, None)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and isinstance(target, torch.Tensor) and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    resize_pos_embed(state, model)
    return state


def visual_structure(visual: nn.Module) -> tuple[list[str], list[str]]:
    """(blocks, tail) of an open_clip visual tower: resblocks + ln_post/proj for ViTs,
    generic discovery (e.g. layer1..layer4 + attnpool for ModifiedResNet) otherwise."""
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if isinstance(resblocks, (nn.ModuleList, nn.Sequential)):
        blocks = [f"transformer.resblocks.{i}" for i in range(len(resblocks))]
        tail = [name for name in VIT_TAIL if _holds_params(getattr(visual, name, None))]
        return blocks, tail
    blocks, last = find_blocks(visual, max_depth=3)
    return blocks, find_tail(visual, last)


def make_text_head_builder(model: nn.Module, tokenizer: Any):
    """(class names, templates) -> ZeroShotHead from `model`'s frozen text tower."""

    def build(class_names: list[str], templates: list[str]) -> ZeroShotHead:
        device = next(model.parameters()).device
        modes = {module: module.training for module in model.modules()}
        model.eval()  # dropout off; restored below so a visual tower in training stays so
        try:
            with torch.no_grad():
                embeddings = average_prompt_embeddings(
                    lambda prompts: model.encode_text(tokenizer(prompts).to(device)), class_names, templates)
        finally:
            for module, mode in modes.items():
                module.training = mode
        return ZeroShotHead(embeddings, model.logit_scale.detach().float().cpu().clone())

    return build


@contextmanager
def _quiet_random_init_warning():
    # open_clip warns "initialized randomly" when given no tag, but we load the file right after.
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    dropper = _Drop()
    root.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)


def _eval_preprocess(visual: nn.Module, cfg: BackboneSpec):
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    pp = dict(getattr(visual, "preprocess_cfg", None) or {})
    overrides = {k: v for k, v in (("mean", cfg.mean), ("std", cfg.std), ("size", cfg.image_size)) if v}
    pp = merge_preprocess_dict(pp, overrides) if overrides else pp
    pp_cfg = PreprocessCfg(**pp)
    mean = tuple(float(x) for x in _triple(pp_cfg.mean))
    std = tuple(float(x) for x in _triple(pp_cfg.std))
    return image_transform_v2(pp_cfg, is_train=False), mean, std


def _embed_dim(model: nn.Module) -> int:
    visual = model.visual
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    if hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    return int(model.text_projection.shape[1])


def _holds_params(obj: Any) -> bool:
    if isinstance(obj, nn.Parameter):
        return True
    return isinstance(obj, nn.Module) and any(True for _ in obj.parameters())


def _as_int(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def _triple(values: Any) -> tuple:
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    return values * 3 if len(values) == 1 else values
