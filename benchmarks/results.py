"""Where benchmark results go: raw rows in a JSON file beside the script, a table between
two markers in benchmarks/README.md, and the CPU each row was measured on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def cpu_model() -> str:
    """``lscpu``'s model name: the "2 cores" behind this project are not always one CPU."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "?"
    )


def load_rows(name: str, fresh: bool = False) -> dict[str, dict]:
    """The rows measured so far (``{}`` when ``fresh``: a --no-write run starts empty)."""
    path = HERE / name
    return json.loads(path.read_text()) if path.exists() and not fresh else {}


def save_rows(name: str, rows: dict[str, dict]) -> None:
    (HERE / name).write_text(json.dumps(rows, indent=1) + "\n")


def write_section(marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    readme = HERE / "README.md"
    before, rest = readme.read_text().split(begin)
    _, after = rest.split(end)
    readme.write_text(f"{before}{begin}\n{text}\n{end}{after}")
