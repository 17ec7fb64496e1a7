"""Mutation score per module from a `mutmut run`'s results (mutants/**/*.meta), as markdown.

    python benchmarks/mutation_score.py [--mutants mutants] [--equivalent docs/mutation-equivalent.txt]
                                        [--survivors]

caught = killed + timeout; checked = every mutant with a verdict (caught, survived, no tests,
suspicious); score = caught / checked. Mutants named in the --equivalent file (one name per
line, then a reason after whitespace) are counted apart: the adjusted score leaves them out.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py): what each verdict means here.
CAUGHT = {1, 3, 36, 24, -24, 152, 255, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


def verdict(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in CAUGHT:
        return "caught"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "suspicious"


def read_results(root: Path) -> dict[str, dict[str, int | None]]:
    """{module path: {mutant name: exit code or None}} for every mutated file under `root`/src."""
    results = {}
    for meta in sorted(root.glob("src/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            results[str(meta.relative_to(root / "src"))[: -len(".meta")]] = codes
    return results


def read_equivalent(path: Path | None) -> dict[str, str]:
    """{mutant name: reason} from lines `name  reason` (blank lines and # comments skipped)."""
    if path is None:
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            entries[name] = reason.strip()
    return entries


def score_table(results: dict[str, dict[str, int | None]], equivalent: dict[str, str]) -> str:
    """One row per module and a total: counts, score, and the score without the equivalent mutants."""
    head = "| module | mutants | checked | caught | survived | no tests | equivalent | score | adjusted |"
    lines = [head, "|---|" + "---:|" * 8]
    total: Counter = Counter()
    for module, codes in results.items():
        counts = Counter(verdict(code) for code in codes.values())
        counts["mutants"] = len(codes)
        counts["equivalent"] = sum(1 for name, code in codes.items() if name in equivalent and verdict(code) == "survived")
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("**all**", total))
    return "\n".join(lines)


def _row(name: str, c: Counter) -> str:
    checked = c["caught"] + c["survived"] + c["no tests"] + c["suspicious"]
    score = f"{100 * c['caught'] / checked:.1f} %" if checked else "–"
    rest = checked - c["equivalent"]
    adjusted = f"{100 * c['caught'] / rest:.1f} %" if rest else "–"
    return (f"| {name} | {c['mutants']} | {checked} | {c['caught']} | {c['survived']} | {c['no tests']} | "
            f"{c['equivalent']} | {score} | {adjusted} |")


def survivors(results: dict[str, dict[str, int | None]], equivalent: dict[str, str]) -> list[str]:
    """Every surviving mutant, with its reason where it is listed as equivalent."""
    out = []
    for codes in results.values():
        for name, code in codes.items():
            if verdict(code) == "survived":
                out.append(f"{name}  equivalent: {equivalent[name]}" if name in equivalent else name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--equivalent", type=Path, default=None)
    parser.add_argument("--survivors", action="store_true", help="also list every survivor")
    args = parser.parse_args(argv)
    results = read_results(args.mutants)
    if not results:
        raise SystemExit(f"no mutmut results under {args.mutants}/src: run `mutmut run` first")
    equivalent = read_equivalent(args.equivalent)
    print(score_table(results, equivalent))
    pending = sum(code is None for codes in results.values() for code in codes.values())
    if pending:
        print(f"\nnot checked yet: {pending} mutants (`mutmut run` resumes them)")
    if args.survivors:
        print("\n" + "\n".join(survivors(results, equivalent)))


if __name__ == "__main__":
    main()
