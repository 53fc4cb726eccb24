"""What the example scripts share: finding ../shared/data and printing a results table."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    """$GRAFT_SHARED_DATA, else ``shared/data`` beside an ancestor of this checkout, else /work's."""
    if os.environ.get("GRAFT_SHARED_DATA"):
        return Path(os.environ["GRAFT_SHARED_DATA"])
    for base in (*Path(__file__).resolve().parents, Path("/work")):
        if (base / "shared" / "data" / "README.md").is_file():
            return base / "shared" / "data"
    raise SystemExit("shared data not found: set GRAFT_SHARED_DATA to the shared/data folder")


def print_table(rows: list[tuple[str, float, tuple[float, float], float]]) -> None:
    """``(run, accuracy, (low, high), seconds)`` rows."""
    print(f"{'run':<32}{'accuracy':>9}  {'95% interval':<17}{'seconds':>8}")
    for name, accuracy, (low, high), seconds in rows:
        print(f"{name:<32}{accuracy:>9.3f}  [{low:.3f}, {high:.3f}]  {seconds:>7.0f}")
