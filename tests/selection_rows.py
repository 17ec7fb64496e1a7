"""Hand-made rows for the selection table and figure (tests/reports/test_selection*.py)."""

LABELS = {"erm": "ERM", "swad": "SWAD", "ham": "HAM", "single_source_mean": "Single-source (mean)",
          "ham_soup": "HAM soup"}


def rows(method, per_seed):
    """per_seed: {seed: {domain: (val %, test %)}}"""
    return [{"dataset": "PACS", "method": method, "test_domain": d, "seed": s, "val_acc": v / 100, "test_acc": t / 100}
            for s, cells in per_seed.items() for d, (v, t) in cells.items()]


def table():
    return (rows("erm", {0: {"a": (90, 60), "b": (80, 70)}, 1: {"a": (92, 62), "b": (82, 72)}})
            + rows("swad", {0: {"a": (91, 63), "b": (81, 73)}, 1: {"a": (93, 64), "b": (83, 74)}})
            # HAM: lower source validation, higher held-out accuracy.
            + rows("ham", {0: {"a": (85, 70), "b": (75, 76)}, 1: {"a": (86, 71), "b": (76, 77)}})
            # A source average above everything, but not one model: never chosen.
            + rows("single_source_mean", {0: {"a": (99, 1), "b": (99, 1)}, 1: {"a": (99, 1), "b": (99, 1)}})
            # Tuning seed only: not comparable with the 2-seed rows.
            + rows("ham_soup", {0: {"a": (99, 99), "b": (99, 99)}}))
