"""README "Your own model and data": both examples are complete, short and do what the text says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Your own model and data"):]
SECTION = SECTION[:SECTION.index("\n## ", 1)]
OWN_MODEL, OWN_LOOP = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def _run(code, tmp_path, monkeypatch, capsys) -> list[str]:
    assert len(code.splitlines()) <= 40
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    return capsys.readouterr().out.splitlines()


def test_own_model_and_data(tmp_path, monkeypatch, capsys):
    last = _run(OWN_MODEL, tmp_path, monkeypatch, capsys)[-1]
    acc, eps = map(float, re.fullmatch(r"test accuracy ([0-9.]+) at epsilon ([0-9.]+)", last).groups())
    assert acc >= 0.9 and eps <= 8.0 + 1e-9  # the README says 0.98 at 8.00 (0.95-0.99 in six runs)
    assert (tmp_path / "runs" / "own_model" / "privacy.json").exists()


def test_own_training_loop(tmp_path, monkeypatch, capsys):
    lines = _run(OWN_LOOP, tmp_path, monkeypatch, capsys)
    rows = [re.search(r"distance ([0-9.]+), epsilon ([0-9.]+)", line).groups() for line in lines]
    first, last = float(rows[0][0]), float(rows[-1][0])
    assert last < first / 2 and float(rows[-1][1]) <= 4.0 + 1e-9  # about 10 -> 3, epsilon the planned 4
