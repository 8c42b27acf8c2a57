"""Entry point of ``python -m dlas.report``; the CLI itself is :mod:`dlas.report.cli`."""

from __future__ import annotations

from dlas.report.cli import main
from dlas.report.write import write_report

__all__ = ["main", "write_report"]

if __name__ == "__main__":
    raise SystemExit(main())
