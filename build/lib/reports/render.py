"""A built table (:class:`Report`, one :class:`Section` per measured protocol) and its renderings: Markdown, LaTeX,
HTML and CSV, and the files ``python -m reports.table`` writes."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.tracking import REPO_ROOT
from reports.query import Protocol

__all__ = ["OUT_DIR", "FORMATS", "Section", "Report", "render_markdown", "render_latex", "render_html", "render_csv",
           "render", "write_report"]

OUT_DIR = REPO_ROOT / "reports" / "out"
FORMATS = {"md": "md", "latex": "tex", "html": "html", "csv": "csv"}


@dataclass
class Section:
    heading: str                   # "Measured under: <protocol>" or the empty-store heading
    protocol: Protocol | None      # None when nothing was measured
    frame: pd.DataFrame            # display text, one row per table row
    data: pd.DataFrame             # the same rows as numbers (CSV)
    lines: list[str] = field(default_factory=list)   # protocol footer, fill-in commands


@dataclass
class Report:
    name: str
    title: str
    header: list[str]              # published source and protocol
    sections: list[Section]
    notes: list[str]
    experiment: str | None         # None: every experiment of the store
    datasets: list[str] | None
    measured_only: bool = False    # only measured rows and columns (no published or reference values)
    wide: bool = False             # every column, not only the paper-width ones
    metrics: str = "paper"         # METRIC_VIEWS: "dinov2" adds the dinov2 metric set's columns


# ============================================================================================== rendering

def _md_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    cells = [[c.replace("|", "\\|") for c in r] for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt(r) for r in cells[1:]])


def render_markdown(rep: Report) -> str:
    out = [f"## {rep.title}", ""]
    out += [f"- {h}" for h in rep.header] + [""]
    for s in rep.sections:
        out += [f"### {s.heading}", "", _md_table(s.frame), ""]
        out += [f"- {line}" for line in s.lines] + [""]
    out += ["Notes:", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(out)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    s = "".join(_LATEX.get(ch, ch) for ch in str(s))
    return s.replace("±", r"$\pm$").replace("->", r"$\rightarrow$")


def render_latex(rep: Report) -> str:
    out = [f"% {rep.title}"] + [f"% {h}" for h in rep.header]
    for s in rep.sections:
        df = s.frame.map(_tex)
        df.columns = [_tex(c) for c in df.columns]
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(rep.title)}. {_tex(s.heading)}.}}",
                "\\resizebox{\\linewidth}{!}{%",
                df.to_latex(index=False, escape=False, column_format="l" * len(df.columns)).strip(), "}",
                "\\end{table}"]
        out += [f"% {line}" for line in s.lines]
    out += [f"% Note: {n}" for n in rep.notes]
    return "\n".join(out) + "\n"


def render_html(rep: Report) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(rep.title)}</title>",
           "<style>body{font-family:sans-serif} table{border-collapse:collapse;font-size:13px}"
           " td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} th{background:#eee}</style>",
           "</head><body>", f"<h2>{e(rep.title)}</h2>", "<ul>"] + [f"<li>{e(h)}</li>" for h in rep.header]
    out.append("</ul>")
    for s in rep.sections:
        out += [f"<h3>{e(s.heading)}</h3>", s.frame.to_html(index=False, escape=True, border=0), "<ul>"]
        out += [f"<li>{e(line)}</li>" for line in s.lines] + ["</ul>"]
    out += ["<h4>Notes</h4>", "<ul>"] + [f"<li>{e(n)}</li>" for n in rep.notes] + ["</ul>", "</body></html>"]
    return "\n".join(out) + "\n"


def render_csv(rep: Report) -> str:
    return pd.concat([s.data for s in rep.sections], ignore_index=True).to_csv(index=False)


def render(rep: Report, fmt: str = "md") -> str:
    return {"md": render_markdown, "latex": render_latex, "html": render_html, "csv": render_csv}[fmt](rep)


def write_report(rep: Report, fmt: str = "md", out_dir: str | Path = OUT_DIR) -> list[Path]:
    """Writes the Markdown rendering and, if different, ``fmt``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"table-{rep.name}" + (f"-{'-'.join(rep.datasets)}" if rep.datasets else "")
            + ("-dinov2" if rep.metrics == "dinov2" else "") + ("-measured" if rep.measured_only else "")
            + ("-wide" if rep.wide else ""))
    paths = []
    for f in dict.fromkeys(["md", fmt]):
        p = out / f"{stem}.{FORMATS[f]}"
        p.write_text(render(rep, f))
        paths.append(p)
    return paths
