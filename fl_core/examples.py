"""The example configs: in a clone they are ``examples/*.toml``; an installed wheel carries them as
``fl_core.example_configs`` (see pyproject.toml). ``fl-core examples [--copy DIR]`` uses this."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from fl_core.errors import FLError

__all__ = ["examples_dir", "example_configs", "copy_examples"]


def examples_dir() -> Path:
    """Where the example configs are: the clone's examples/ when run from one, else the wheel's copy."""
    clone = Path(__file__).resolve().parents[1] / "examples"
    if clone.is_dir():
        return clone
    spec = importlib.util.find_spec("fl_core.example_configs")
    if spec is None or not spec.submodule_search_locations:
        raise FLError("cannot find the example configs: neither examples/ beside fl_core nor fl_core.example_configs "
                      "is installed")
    return Path(next(iter(spec.submodule_search_locations)))


def example_configs() -> list[Path]:
    return sorted(examples_dir().glob("*.toml"))


def copy_examples(dst: str | Path) -> list[Path]:
    """Copy every example config into ``dst`` (created); refuse to replace a file already there."""
    dst = Path(dst)
    srcs = example_configs()
    clash = [dst / p.name for p in srcs if (dst / p.name).exists()]
    if clash:
        raise FLError(f"refusing to replace {', '.join(map(str, clash))}: copy into an empty directory")
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dst / p.name)) for p in srcs]
