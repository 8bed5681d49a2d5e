"""What every benchmark prints: the machine it ran on and a Markdown table of its rows."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence


def machine() -> str:
    """Processor, cores and Python version, for the first line of a result."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
