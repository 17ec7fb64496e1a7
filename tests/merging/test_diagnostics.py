import math

import pytest

from dgmerge.merging import format_report, save_heatmap, task_vector_report

from .helpers import t


def test_report_by_hand(tmp_path):
    pre = {"a": t(0.0, 0.0), "b": t(1.0, 1.0)}
    fts = [{"a": t(3.0, 4.0), "b": t(1.0, 1.0)}, {"a": t(-3.0, 4.0), "b": t(2.0, 1.0)}]
    report = task_vector_report(pre, fts, names=["x", "y"])
    assert report.layer_norms == {"a": [5.0, 5.0], "b": [0.0, 1.0]}
    # a: entry 0 has +3 and -3 -> conflict; entry 1 agrees; b: no opposing signs
    assert report.conflict_rate == {"a": 0.5, "b": 0.0}
    assert report.overall_conflict_rate == 0.25
    # τx = [3, 4, 0, 0], τy = [-3, 4, 1, 0]: cos = 7 / (5 √26)
    assert report.cosine[0][1] == pytest.approx(7 / (5 * math.sqrt(26)))
    assert report.cosine[0][0] == pytest.approx(1.0)
    text = format_report(report)
    assert "x" in text and "0.500" in text and "sign-conflict rate" in text
    save_heatmap(report, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_task_vector_has_zero_cosine():
    report = task_vector_report({"a": t(1.0)}, [{"a": t(1.0)}, {"a": t(2.0)}])
    assert report.cosine[0][1] == 0.0
