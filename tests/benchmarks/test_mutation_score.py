"""benchmarks/mutation_score.py on a hand-made mutmut results tree: verdicts, scores, survivors."""

import json

import pytest


def test_scores_by_hand(tmp_path, capsys, script):
    meta = tmp_path / "src" / "pkg" / "a.py.meta"
    meta.parent.mkdir(parents=True)
    # 2 killed, 1 timeout, 2 survived (one listed as equivalent), 1 without tests, 1 not checked.
    codes = {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 1, "pkg.a.x_f__mutmut_3": -24,
             "pkg.a.x_f__mutmut_4": 0, "pkg.a.x_f__mutmut_5": 0, "pkg.a.x_f__mutmut_6": 33, "pkg.a.x_f__mutmut_7": None}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    (tmp_path / "src" / "pkg" / "empty.py.meta").write_text(json.dumps({"exit_code_by_key": {}}))
    equivalent = tmp_path / "eq.txt"
    equivalent.write_text("# comment\npkg.a.x_f__mutmut_5  the value is never read\n")
    script("mutation_score").main(["--mutants", str(tmp_path), "--equivalent", str(equivalent), "--survivors"])
    out = capsys.readouterr().out
    # checked = 3 caught + 2 survived + 1 no tests = 6: score 3/6; adjusted leaves the equivalent out: 3/5.
    assert "| pkg/a.py | 7 | 6 | 3 | 2 | 1 | 1 | 50.0 % | 60.0 % |" in out
    assert "empty.py" not in out and "not checked yet: 1 mutants" in out
    assert "pkg.a.x_f__mutmut_4\n" in out and "pkg.a.x_f__mutmut_5  equivalent: the value is never read" in out


def test_no_results_says_what_to_run(tmp_path, script):
    with pytest.raises(SystemExit, match="mutmut run"):
        script("mutation_score").main(["--mutants", str(tmp_path)])
