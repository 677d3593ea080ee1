"""The table every chapter ends its experiment with: paper | ours | does it reproduce?

The table is rendered in the notebook and saved as ``<chapter>.results.json`` next to the
executed notebook (the current directory), so that a dashboard can collect every chapter's.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_VERDICTS = {True: "yes", False: "no", None: "n/a"}


def _verdict(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _VERDICTS[value]
    if isinstance(value, str) and value in ("yes", "no", "partly", "n/a"):
        return value
    raise ValueError(f"reproduced must be True, False, None or one of 'yes', 'no', 'partly', 'n/a'; got {value!r}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class ResultsTable:
    """A rendered paper-vs-ours table (shown by Jupyter as HTML, printable as Markdown)."""

    chapter: str
    profile: str
    rows: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_markdown(self) -> str:
        lines = ["| claim | paper | ours (" + self.profile + ") | reproduced? |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['reproduced']} |")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("claim", "paper", f"ours ({self.profile})", "reproduced?"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(r[k])}</td>" for k in ("claim", "paper", "ours", "reproduced"))
            + "</tr>" for r in self.rows)
        return f"<table class='layerwise-results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        return self.to_markdown()


def paper_table(chapter: str, rows: list[dict[str, Any]], *, profile: str,
                out_dir: str | Path = ".", extra: dict[str, Any] | None = None) -> ResultsTable:
    """Build the chapter's results table and save it as ``<out_dir>/<chapter>.results.json``.

    Each row is ``{"claim": str, "paper": value, "ours": value, "reproduced": bool | None | str}``;
    ``reproduced`` must be computed from this run's numbers (``True``/``False``), ``"partly"``,
    or ``None`` when the claim is not comparable at this scale. ``extra`` (JSON-serialisable)
    is stored beside the rows.
    """
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"chapter must be a non-empty string, got {chapter!r}")
    if not isinstance(rows, list) or not rows:
        raise ValueError("rows must be a non-empty list of dicts")
    clean = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise TypeError(f"rows[{i}] must be a dict, got {type(r).__name__}")
        missing = {"claim", "paper", "ours", "reproduced"} - set(r)
        if missing:
            raise ValueError(f"rows[{i}] is missing {sorted(missing)}")
        clean.append({"claim": str(r["claim"]), "paper": _fmt(r["paper"]), "ours": _fmt(r["ours"]),
                      "reproduced": _verdict(r["reproduced"])})
    meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    table = ResultsTable(chapter=chapter, profile=profile, rows=clean, meta=meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.path = out / f"{chapter}.results.json"
    payload = {"chapter": chapter, "profile": profile, "rows": clean, "meta": meta, "extra": extra or {}}
    table.path.write_text(json.dumps(payload, indent=2, default=float))
    return table
