"""README: its snippet runs and prints what it computed; it links only inside the repository and
indexes every document (issue 14, part 8)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_snippet_prints_what_it_computed():
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "simulate(" in b]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "k = 16, t = 6: 100 of 100 clients in the sum"
    diff = float(re.search(r"plain mean: ([0-9.e+-]+)", lines[1]).group(1))
    assert 0 < diff < 1e-7


def test_no_link_leaves_the_repository():
    targets = re.findall(r"\]\(([^)]+)\)", README)
    paths = re.findall(r"`((?:\.\./|docs/|examples/)[^` ]*)`", README)
    assert not [t for t in targets + paths if t.startswith(("..", "/", "http:", "https:"))]
    for p in paths:
        if not any(ch in p for ch in "*<"):
            assert (ROOT / p.split("#")[0].rstrip("/")).exists(), p
    for t in targets:
        if not t.startswith("#"):
            assert (ROOT / t).exists(), t


def test_every_document_is_indexed():
    index = README[README.index("## Documentation"):]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"`docs/{doc.name}`" in index, doc.name
    for section in ("## Auditing a run", "## Flower", "## Datasets and models"):
        assert section in README
