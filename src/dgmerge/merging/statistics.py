"""Data statistics for RegMean and Fisher merging, collected once per fine-tuned model.

The merges themselves stay pure functions of tensors: collect these with a model and a data
loader, save them like state dicts if needed, and pass them to `merge(..., grams=...)` or
`merge(..., fishers=...)`.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterable

import torch
from torch import Tensor, nn


def _inputs(batch: Any) -> Any:
    """The model input of a batch: a tensor, the first item of (x, y), or batch["image"/"pixel_values"]."""
    if isinstance(batch, dict):
        for name in ("image", "images", "pixel_values", "input", "x"):
            if name in batch:
                return batch[name]
        raise ValueError(f"cannot find the model input in batch keys {sorted(batch)}")
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


def _labels(batch: Any) -> Tensor | None:
    if isinstance(batch, dict):
        return batch.get("label", batch.get("labels"))
    if isinstance(batch, (list, tuple)) and len(batch) > 1:
        return batch[1]
    return None


@torch.no_grad()
def collect_gram(model: nn.Module, loader: Iterable, *, prefix: str = "", max_batches: int | None = None,
                 device: str | torch.device = "cpu", conv1x1: bool = False, keys: Collection[str] | None = None,
                 forward: Callable[[Any], Any] | None = None) -> dict[str, Tensor]:
    """Mean input Gram matrices XᵀX / rows of every linear map, keyed by its weight's state-dict key.

    Covers nn.Linear (key "<module>.weight") and self-attention nn.MultiheadAttention input
    projections ("<module>.in_proj_weight", query = key = value assumed). MultiheadAttention's
    out_proj is called functionally, so no hook sees its input: it is averaged by RegMean.
    Normalising by the row count makes models fine-tuned on different amounts of data
    comparable. `prefix` is prepended to keys (e.g. "visual." when `model` is a sub-module).

    conv1x1: also the 1×1 convolutions (groups 1), with every pixel of the input a row of X
    (what RegMean's conv1x1="matrix" solves). keys: only these weights. forward: how to run
    `model` on a batch's input (default `model(x)`), e.g. from cached activations at a cut.
    """
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}

    def add(key: str, x: Tensor) -> None:
        x = x.detach()
        x = x.permute(0, 2, 3, 1) if x.dim() == 4 else x  # NCHW: one row per pixel
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        gram = x.T @ x
        sums[key] = sums[key] + gram if key in sums else gram
        rows[key] = rows.get(key, 0) + x.shape[0]

    def wanted(key: str) -> bool:
        return keys is None or key in keys

    handles = []
    for name, module in model.named_modules():
        key_base = prefix + (name + "." if name else "")
        pointwise = (conv1x1 and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                     and module.groups == 1)
        if (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim
                and wanted(key_base + "in_proj_weight")):
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, kwargs, k=key_base + "in_proj_weight": add(k, args[0] if args else kwargs["query"]),
                with_kwargs=True))
        elif (isinstance(module, nn.Linear) or pointwise) and wanted(key_base + "weight"):
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, k=key_base + "weight": add(k, args[0])))
    was_training = model.training
    model.eval().to(device)
    run = forward or model
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            run(_inputs(batch).to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {k: (v / rows[k]).to(torch.float32) for k, v in sums.items()}


def collect_fisher(model: nn.Module, loader: Iterable, *, prefix: str = "", max_batches: int | None = None,
                   labels: str = "model", device: str | torch.device = "cpu",
                   log_probs: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Diagonal Fisher information E[(∂ log p(y|x)/∂θ)²] of every trainable parameter.

    Per-example gradients (exact diagonal, one backward pass per example). labels="model"
    samples y from the model's predictive distribution (the true Fisher, Matena & Raffel);
    labels="true" uses the batch labels (the empirical Fisher). `log_probs` maps model
    outputs to log-probabilities (default: log_softmax of the logits). The model runs and the
    Fishers are accumulated and returned on `device`; sampled labels come from a CPU generator,
    so they are the same on every device.
    """
    if labels not in ("model", "true"):
        raise ValueError(f"labels={labels!r}; use 'model' or 'true'")
    log_probs = log_probs or (lambda out: torch.log_softmax(out, dim=-1))
    was_training = model.training
    model.eval().to(device)
    params = {prefix + n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    count = 0
    generator = torch.Generator(device="cpu").manual_seed(0)
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            x = _inputs(batch).to(device)
            y_true = _labels(batch)
            for j in range(x.shape[0]):
                logp = log_probs(model(x[j:j + 1]))[0]
                if labels == "true":
                    if y_true is None:
                        raise ValueError("labels='true' but the batches carry no labels")
                    target = int(y_true[j])
                else:
                    target = int(torch.multinomial(logp.detach().exp().cpu(), 1, generator=generator))
                model.zero_grad(set_to_none=True)
                logp[target].backward()
                for k, p in params.items():
                    if p.grad is not None:
                        fisher[k] += p.grad.detach().to(torch.float32) ** 2
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no examples")
    return {k: v / count for k, v in fisher.items()}
