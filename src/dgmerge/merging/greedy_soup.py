"""Greedy soup (Wortsman et al., Recipe 1): add models by validation accuracy while it helps."""

from __future__ import annotations

from typing import Callable, Sequence

from dgmerge.merging.average import weighted_average
from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.validate import MergeError, Param, StateDict

Evaluate = Callable[[StateDict], float]


@register("greedy_soup", params={
    "evaluate": Param("callable", required=True, help="state dict -> validation accuracy (higher is better)"),
    "scores": Param("floats", optional=True, help="the models' own validation scores, if already known"),
    "strict": Param("bool", help="add a model only if it strictly improves (default: ≥, as in the paper)"),
})
def greedy_soup(pretrained: StateDict, finetuned: Sequence[StateDict], *, evaluate: Evaluate,
                scores: Sequence[float] | None = None, strict: bool = False) -> MergedState:
    """Greedy soup: sort models by validation score, start from the best, keep adding a model
    when the uniform average with it scores at least as well (strictly better if `strict`).

    info["ingredients"] lists the chosen model indices; info["history"] every candidate's score.
    """
    if scores is None:
        scores = [float(evaluate(state)) for state in finetuned]
    elif len(scores) != len(finetuned):
        raise MergeError(f"greedy_soup: {len(scores)} scores for {len(finetuned)} models")
    order = sorted(range(len(finetuned)), key=lambda i: scores[i], reverse=True)
    chosen = [order[0]]
    best = float(scores[order[0]])
    history = [{"candidate": order[0], "score": best, "added": True}]
    for index in order[1:]:
        candidate = weighted_average(pretrained, [finetuned[i] for i in chosen + [index]])
        value = float(evaluate(candidate))
        added = value > best if strict else value >= best
        history.append({"candidate": index, "score": value, "added": added})
        if added:
            chosen.append(index)
            best = value
    result = weighted_average(pretrained, [finetuned[i] for i in chosen])
    result.info = {"ingredients": chosen, "individual_scores": list(scores), "soup_score": best,
                   "history": history}
    return result
