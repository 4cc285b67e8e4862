"""Writing a benchmark's JSON results, creating the folder first (a fresh clone has none)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: str | Path, payload: Any) -> Path:
    """Writes ``payload`` as indented JSON to ``path`` and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return out
