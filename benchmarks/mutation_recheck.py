"""Check chosen mutants of a `mutmut run` against chosen test files, in one process.

    cd mutants && PYTHONPATH=src python ../benchmarks/mutation_recheck.py NAMES TEST [TEST ...]

NAMES is a regular expression over mutant names (e.g. 'cell.xǁCellǁrecord__') or @FILE with one
name per line (e.g. the survivors from `mutmut results`). Prints `KILLED <name> <first failing
test>` or `ALIVE <name>` for each, then a count. mutmut itself forks a fresh pytest per mutant and
runs every test that covers the function; while writing a test for a group of survivors this
answers in seconds which of them the test kills. The verdicts of record still come from
`mutmut run <names>`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest


def mutant_names(spec: str, root: Path = Path(".")) -> list[str]:
    """Names listed in @FILE (first word of each non-blank line), or every mutant matching a regex."""
    if spec.startswith("@"):
        return [line.split()[0] for line in Path(spec[1:]).read_text().splitlines() if line.strip()]
    pattern = re.compile(spec)
    return sorted(name for meta in root.glob("src/**/*.meta")
                  for name in json.loads(meta.read_text())["exit_code_by_key"] if pattern.search(name))


class _Failures:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)


def run(args: list[str], mutant: str) -> tuple[int, list[str]]:
    """pytest exit code and failing tests with MUTANT_UNDER_TEST=`mutant` (mutmut's trampolines read it per call)."""
    os.environ["MUTANT_UNDER_TEST"] = mutant
    spy = _Failures()
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(args, plugins=[spy])
    return int(code), spy.failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", help="regex over mutant names, or @FILE listing them")
    parser.add_argument("tests", nargs="+", help="test files or node ids")
    options = parser.parse_args(argv)
    names = mutant_names(options.names)
    args = ["-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda", *options.tests]
    code, failed = run(args, "none")
    if code != 0:
        raise SystemExit(f"the tests fail without any mutant ({', '.join(failed) or f'exit {code}'}): fix them first")
    alive = 0
    for name in names:
        code, failed = run(args, name)
        if code == 0:
            alive += 1
            print("ALIVE", name, flush=True)
        else:
            print("KILLED", name, failed[0] if failed else f"(pytest exit {code})", flush=True)
    print(f"checked {len(names)}, alive {alive}")
    return alive


if __name__ == "__main__":
    main()
