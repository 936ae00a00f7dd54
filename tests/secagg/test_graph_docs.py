"""docs/graph.md section 5 is choose_k_t's output: every row recomputed, both modes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from secagg.graph import choose_k_t

DOC = (Path(__file__).parents[2] / "docs" / "graph.md").read_text()


def _rows() -> list[list[str]]:
    block = DOC.split("<!-- table: choose_k_t -->", 1)[1].strip().split("\n\n", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _n(cell: str) -> int:
    m = re.fullmatch(r"10([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", cell)
    return 10 ** int(m.group(1).translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789"))) if m else int(cell)


def _log2(cell: str) -> float:
    return -math.inf if cell == "−∞" else float(cell.replace("−", "-"))


def test_the_table_has_the_issues_configurations():
    keys = {(_n(r[0]), float(r[1]), float(r[2])) for r in _rows()}
    assert {(100, 0.05, 0.1), (20, 0.05, 0.1), (10, 0.05, 0.3), (1000, 0.05, 0.3), (1000, 0.05, 0.05)} <= keys


@pytest.mark.parametrize("row", _rows(), ids=lambda r: "-".join(r[:3]))
def test_every_row_is_choose_k_t_output(row):
    n, corrupt, dropout = _n(row[0]), float(row[1]), float(row[2])
    semi = choose_k_t(n, dropout=dropout, corrupt=corrupt)
    active = choose_k_t(n, dropout=dropout, corrupt=corrupt, active=True)
    assert [int(row[3]), int(row[4])] == [semi.k, semi.t]
    assert [int(row[7]), int(row[8]), int(row[9])] == [active.k, active.t, active.corrupt_neighbours]
    for cell, value, target in ((row[5], semi.bounds.security_log2, -40), (row[6], semi.bounds.correctness_log2, -30),
                                (row[10], active.bounds.security_log2, -40),
                                (row[11], active.bounds.correctness_log2, -30)):
        assert _log2(cell) == value == -math.inf or _log2(cell) == pytest.approx(value, abs=0.05)
        assert value <= target
    assert 2 * active.t > active.k + active.corrupt_neighbours   # what RoundConfig then accepts
    assert 2 * active.t == active.k + active.corrupt_neighbours + 1   # c is the most it tolerates
