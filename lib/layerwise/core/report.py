"""The table every chapter ends its experiment with: paper | ours | does it reproduce? — and the
one rule that decides "does it reproduce?" when a claim compares runs over seeds.

The table is rendered in the notebook and saved as ``<chapter>.results.json`` next to the
executed notebook (the current directory), so that a dashboard can collect every chapter's.
:func:`compare` is the course's verdict rule for "ours is better than the baseline" over seeds
(independent or paired runs); every chapter's statistical rows come from it.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

_VERDICTS = {True: "yes", False: "no", None: "n/a"}
#: The book page that states the verdict rule, relative to a chapter page (book/<part>/<chapter>.html).
RULE_PAGE = "../how_we_judge.html"


def _verdict(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _VERDICTS[value]
    if isinstance(value, str) and value in ("yes", "no", "partly", "n/a"):
        return value
    raise ValueError(f"reproduced must be True, False, None or one of 'yes', 'no', 'partly', 'n/a'; got {value!r}")


#: Badge colours (text, background) of each verdict; ``layerwise.course.VERDICT_COLOURS`` (the
#: dashboard, which imports nothing of the library) holds the same (tests/test_book.py checks).
VERDICT_COLOURS = {"yes": ("#116329", "#dafbe1"), "partly": ("#7d4e00", "#fff1c2"),
                   "no": ("#a40e26", "#ffe0e3"), "n/a": ("#424a53", "#eaeef2")}
_SYMBOLS = {"yes": "✓", "partly": "◐", "no": "✗", "n/a": "–"}


def verdict_badge(verdict: Any) -> str:
    """A verdict (``True``/``False``/``None`` or ``"yes"``, ``"partly"``, ``"no"``, ``"n/a"``) as an
    HTML badge: a symbol and the word, coloured (green, amber, red, grey)."""
    v = _verdict(verdict)
    fg, bg = VERDICT_COLOURS[v]
    return (f"<span class='layerwise-verdict layerwise-verdict-{'na' if v == 'n/a' else v}' "
            f"style='display:inline-block;padding:0.05em 0.55em;border-radius:0.8em;font-weight:600;"
            f"white-space:nowrap;color:{fg};background:{bg};border:1px solid {fg}'>{_SYMBOLS[v]} {v}</span>")


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
        lines.append(f"\nVerdicts follow the course's rule ({RULE}): see [How we judge]({RULE_PAGE}).")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        """The table as HTML, each verdict a coloured badge; it fits a phone's width (cells wrap,
        the verdict never does), so the verdict column is never cut off."""
        cell = "padding:0.35em 0.5em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top"
        heads = ("claim", "paper", f"ours ({self.profile})", "reproduced?")
        head = "".join(f"<th style='{cell}'>{html.escape(h)}</th>" for h in heads)
        body = "".join(
            "<tr>" + "".join(f"<td style='{cell};overflow-wrap:anywhere'>{html.escape(r[k])}</td>"
                             for k in ("claim", "paper", "ours"))
            + f"<td style='{cell};white-space:nowrap'>{verdict_badge(r['reproduced'])}</td></tr>"
            for r in self.rows)
        caption = (f"<caption style='caption-side:bottom;text-align:left;font-size:0.9em'>Verdicts follow the "
                   f"course's rule: <a href='{RULE_PAGE}'>how we judge</a>.</caption>")
        return (f"<table class='layerwise-results' style='width:100%;border-collapse:collapse;font-size:0.9em'>"
                f"{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

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


# --------------------------------------------------------------------------- the verdict rule

#: The rules :func:`compare` knows, in words (the book's "How we judge" page quotes them).
RULES = {
    "se": "ours beats the baseline by more than one standard error of the difference of the seed means",
    "t05": "a one-sided t-test over seeds rejects 'ours is no better than the baseline' at the 5 % level "
           "(paired over seeds where the runs are paired, Welch's test otherwise)",
}
#: The course's rule: what :func:`compare` applies unless told otherwise (stated on the book's
#: "How we judge" page, book/how_we_judge.md).
RULE = "t05"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: ``diff`` (> 0: ours is better, in the claim's units), its
    standard error ``se``, the one-sided ``p`` value of the t-test, and ``holds`` under ``rule``.
    ``bool(comparison)`` is ``holds``."""

    diff: float
    se: float
    p: float
    n: int
    paired: bool
    margin: float
    rule: str
    holds: bool

    def __bool__(self) -> bool:
        return self.holds

    def __str__(self) -> str:
        return f"{self.diff:+.3g} ± {self.se:.2g} (s.e., n = {self.n})"


def _seeds(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 per-seed values, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or inf: {a.tolist()}")
    return a


def compare(ours: Any, baseline: Any, *, higher_is_better: bool = True, paired: bool = False,
            margin: float = 0.0, rule: str | None = None) -> Comparison:
    """Is ``ours`` better than ``baseline``? Both are per-seed values (one number per run).

    ``diff`` is mean(ours) − mean(baseline) (negated when ``higher_is_better`` is False, so
    ``diff > 0`` always means "ours is better"); with ``paired`` (run ``i`` of both shares seed
    ``i``) it is the mean of the per-seed differences and ``se`` their standard error, otherwise
    ``se`` = √(var(ours)/n₁ + var(baseline)/n₂) (sample variances). ``margin`` ≥ 0 turns the
    question into non-inferiority: "ours is no worse than the baseline by more than ``margin``".

    The verdict follows ``rule`` (default :data:`RULE`): ``"se"`` holds when
    ``diff + margin > se``; ``"t05"`` when the one-sided t-test of ``diff + margin > 0`` has
    p < 0.05 (df = n − 1 paired, Welch–Satterthwaite otherwise). Both can come out "no" when the
    effect is there but small, and come out "yes" by chance when it is not (rarely for t05).
    """
    from scipy import stats

    a, b = _seeds(ours, "ours"), _seeds(baseline, "baseline")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    rule = RULE if rule is None else rule
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    sign = 1.0 if higher_is_better else -1.0
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired runs need as many values in ours ({a.size}) as in baseline ({b.size})")
        d = sign * (a - b)
        diff, se, n = float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)), int(d.size)
        df = n - 1.0
    else:
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        diff, se, n = float(sign * (a.mean() - b.mean())), float(np.sqrt(va + vb)), int(min(a.size, b.size))
        df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if va + vb > 0 else float(n - 1)
    shifted = diff + float(margin)
    if se > 0:
        p = float(stats.t.sf(shifted / se, df))
    else:                                   # every run gave the same difference: no noise to test against
        p = 0.0 if shifted > 0 else 1.0
    holds = shifted > se if rule == "se" else p < 0.05
    return Comparison(diff=diff, se=se, p=p, n=n, paired=paired, margin=float(margin), rule=rule, holds=bool(holds))
