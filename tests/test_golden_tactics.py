"""Tactic decisions are identical to the recorded ones (tests/golden_tactics.py says what is covered):
every committed table entry, the heuristic grid, every tactic's reason for not running, the CPU.
A refactor of the selector or the tactic registry must not change a single decision or reason; a
change meant to alter decisions re-records the file (``python tests/golden_tactics.py --write``) and
says why in its commit."""
import pytest

import golden_tactics as golden

RECORDED = golden.load()
RUNNERS = {"tables": golden.run_table_case, "heuristic": golden.run_heuristic_case, "cpu": golden.run_cpu_case}


@pytest.mark.parametrize("part", sorted(RUNNERS))
def test_decisions_match_the_recording(part, monkeypatch):
    cases = RECORDED[part]
    assert cases, f"no recorded {part} cases"
    diffs = []
    for case in cases:
        *args, want = case
        got = RUNNERS[part](monkeypatch, *args)
        if got != want:
            diffs.append(f"{args}:\n  recorded {want}\n  now      {got}")
    assert not diffs, f"{len(diffs)} of {len(cases)} {part} decisions changed; first ones:\n" + "\n".join(diffs[:5])


def test_every_committed_table_entry_is_covered():
    covered = {(name, key) for name, key, *_ in RECORDED["tables"]}
    now = {(name, key) for name, key, *_ in golden.table_cases()}
    assert now == covered
