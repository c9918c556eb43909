"""Figures the fault, load and fuzz tests measure, for `make soak`.

Short versions run in `make test`; `make soak` (SPOOLKIT_SOAK=1) runs the long
ones and appends one summary line per test to $SPOOLKIT_REPORT. Every figure
in a line is counted from what the test observed, never written in.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Read at import: the autouse fixture clears SPOOLKIT_* before every test.
SOAK = os.environ.get("SPOOLKIT_SOAK") == "1"
REPORT = os.environ.get("SPOOLKIT_REPORT")


def report(name: str, **figures: Any) -> None:
    """Print a summary line; in a soak run also append it to $SPOOLKIT_REPORT."""
    line = json.dumps({"test": name, "soak": SOAK, **figures})
    print(line)
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(line + "\n")
