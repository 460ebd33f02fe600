"""Uniform experiment reports: ``report.json``, ``report.md`` and PNG plots.

``report.json`` is ``{"experiment", "dataset", "model", "rows": [...], ...}``; each row is a flat
dict with a ``name`` and its metrics (accuracies as fractions). ``report.md`` renders the rows
as a Markdown table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.3f}".rstrip("0").rstrip(".")
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Renders rows as a Markdown table; columns default to the union in first-seen order."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"Not JSON serialisable: {type(o).__name__}")


def write(workdir: str, report: dict[str, Any]) -> None:
    """Writes ``report.json`` and ``report.md`` into ``workdir`` atomically."""
    for key in ("experiment", "dataset", "model", "rows"):
        if key not in report:
            raise ValueError(f"A report needs the key {key!r}; got keys {sorted(report)}.")
    os.makedirs(workdir, exist_ok=True)
    text = json.dumps(report, indent=2, default=_json_default)
    _atomic_write(os.path.join(workdir, "report.json"), text + "\n")
    md = [
        f"# {report['experiment']}: {report['model']} on {report['dataset']}\n",
        markdown_table(report["rows"]),
    ]
    for key, value in report.items():
        if key in ("experiment", "dataset", "model", "rows"):
            continue
        md.append(f"\n**{key}**: `{json.dumps(value, default=_json_default)}`\n")
    for name in report.get("plots", []):
        md.append(f"\n![{name}]({name})\n")
    _atomic_write(os.path.join(workdir, "report.md"), "".join(md))


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def savefig(fig: Any, path: str, **kwargs: Any) -> None:
    """Saves ``fig`` to ``path`` on the main process only (every process may build it)."""
    from jaxopt_ft import parallel

    if parallel.is_main_process():
        fig.savefig(path, **kwargs)


def accuracy_by_method(
    rows: Sequence[dict[str, Any]], *, x: str, dense_accuracy: float, dense_label: str
) -> tuple[Any, Any]:
    """Test accuracy against ``row[x]``, one line per ``row["method"]``, dense as a dashed line.

    Returns ``(fig, ax)`` for the caller's axis labels; :func:`save_plot` finishes it.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[x])
        ax.plot([r[x] for r in mine], [r["test_accuracy"] for r in mine], marker="o", label=method)
    ax.axhline(dense_accuracy, color="k", ls="--", lw=1, label=dense_label)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    return fig, ax


def save_plot(fig: Any, workdir: str, name: str, *, legend: bool = True, dpi: int = 100) -> str:
    """Lays out, saves (main process only) and closes ``fig`` as ``workdir/name``; returns name.

    Every plot of an experiment goes through here: build ``fig`` with :func:`pyplot` (or
    :func:`accuracy_by_method`), then list the returned name in the report's ``"plots"``,
    e.g. ``{..., "plots": [save_plot(fig, workdir, "curve.png")]}``, so report.md shows it.

    The PNG also goes to TensorBoard as an image (`jaxopt_ft.events.add_png`).

    Args:
      fig: A matplotlib figure.
      workdir: The experiment's directory.
      name: File name (``.png``), also what report.md links.
      legend: Add a small legend to each axis that has labelled artists and no legend yet
        (a legend the caller placed is kept as it is).
      dpi: Resolution of the PNG.
    """
    if legend:
        for ax in fig.axes:
            if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    savefig(fig, os.path.join(workdir, name), dpi=dpi)
    pyplot().close(fig)
    from jaxopt_ft import events, parallel

    if parallel.is_main_process():
        events.add_png(workdir, name)  # TensorBoard's IMAGES tab, run "report"
    return name


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
