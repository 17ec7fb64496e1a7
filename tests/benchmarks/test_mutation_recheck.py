"""benchmarks/mutation_recheck.py on a hand-made mutants tree whose one function reads
MUTANT_UNDER_TEST the way mutmut's trampolines do: one mutant changes the result, one does not."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mutation_recheck.py"


def tree(tmp_path: Path, expected: int = 1) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text(
        "import os\n\ndef f():\n"
        "    return {'mod.x_f__mutmut_1': 2}.get(os.environ.get('MUTANT_UNDER_TEST', ''), 1)\n")
    names = {"mod.x_f__mutmut_1": 1, "mod.x_f__mutmut_2": 0, "mod.x_g__mutmut_1": 1}
    (tmp_path / "src" / "mod.py.meta").write_text(json.dumps({"exit_code_by_key": names}))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text(f"from mod import f\n\ndef test_f():\n    assert f() == {expected}\n")
    return tmp_path


def recheck(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": "src"}
    env.pop("MUTANT_UNDER_TEST", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=root, env=env, capture_output=True, text=True)


def test_each_mutant_is_killed_by_a_named_test_or_reported_alive(tmp_path):
    root = tree(tmp_path)
    out = recheck(root, r"x_f__", "tests/test_mod.py").stdout.splitlines()
    assert out == ["KILLED mod.x_f__mutmut_1 tests/test_mod.py::test_f", "ALIVE mod.x_f__mutmut_2",
                   "checked 2, alive 1"]
    (root / "names.txt").write_text("mod.x_f__mutmut_2  a survivor\n\n")
    assert recheck(root, "@names.txt", "tests/test_mod.py").stdout.splitlines() == [
        "ALIVE mod.x_f__mutmut_2", "checked 1, alive 1"]


def test_tests_that_fail_without_a_mutant_are_refused(tmp_path):
    done = recheck(tree(tmp_path, expected=3), r"x_f__", "tests/test_mod.py")
    assert done.returncode != 0 and "the tests fail without any mutant (tests/test_mod.py::test_f)" in done.stderr
