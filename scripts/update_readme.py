"""Regenerates the README's Results section from files that commands in this repo write.

    python scripts/update_readme.py

Reads benchmarks/results.json (scripts/benchmarks.sh), runs/paper/paper_table.md
(scripts/paper_table.sh) and runs/<config>/report.json (scripts/experiments.sh); copies each
run's PNG plots into docs/results/<config>/ and rewrites the text between
`<!-- results -->` and `<!-- /results -->` in README.md. Nothing in that section is typed by
hand.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxopt_ft.report import markdown_table  # noqa: E402

# (config name, title, columns to show or None for all)
RUNS = [
    ("mnist1d_cnn", "Training: the paper's CNN on MNIST-1D", None),
    (
        "mnist1d_compress",
        "Compression: prune and quantize (`make demo`)",
        [
            "name",
            "test_accuracy",
            "params",
            "nonzero_params",
            "sparsity",
            "size_bytes",
            "compression",
            "encoding",
            "weight_bits",
            "act_bits",
            "step_ms",
        ],
    ),
    ("mnist1d_sparsity_sweep", "Accuracy vs sparsity", None),
    ("mnist1d_bits_sweep", "Accuracy vs bits", None),
    (
        "mnist1d_sweep",
        "Optimizer × schedule sweep",
        [
            "name",
            "batch_size",
            "learning_rate",
            "steps",
            "test_accuracy",
            "final_train_loss",
        ],
    ),
    ("digits_augment", "Augmentation on a small digits subset", None),
    ("mnist1d_transfer", "Transfer: MNIST-1D classes 0–4 → 5–9, few labels", None),
    ("digits_transfer", "Transfer: digits classes 0–4 → 5–9, few labels", None),
    ("mnist1d_multitask", "Multi-task learning on MNIST-1D", None),
    ("digits_multitask", "Multi-task learning on digits", None),
]

# wall_s is left out: a finished run started again (make results keeps reports, but a resumed
# run rewrites its report) would show the seconds of that restart, not of the training.
SKIP_KEYS = {"per_seed", "curve", "loss_curve", "wall_s"}


def _rows(rows, columns):
    clean = [
        {k: v for k, v in r.items() if k not in SKIP_KEYS and not isinstance(v, list | dict)}
        for r in rows
    ]
    return markdown_table(clean, columns)


def _machine() -> str:
    path = os.path.join(ROOT, "benchmarks", "results.json")
    if not os.path.exists(path):
        return ""
    m = json.load(open(path))["machine"]
    gpu = "no GPU" if m["backend"] == "cpu" else f"JAX backend {m['backend']}"
    return (
        f"Measured on {m['cpu']} ({m['cores']} cores, {gpu}), jax {m['jax']}, Python "
        f"{m['python']}.\n"
    )


def _extra(value) -> bool:
    """Report keys short enough to show inline (long ones, e.g. per-layer lists, are plotted)."""
    return len(json.dumps(value)) <= 160


# Multi-seed tables: (config, title, row key, metric columns). Seed 0 is runs/<config>/, seeds
# 1-2 runs/<config>_seed<N>/ (scripts/more_seeds.sh); shown only when all three exist.
SEEDED = [
    ("mnist1d_compress", "Compression over seeds 0–2", ["test_accuracy", "size_bytes"]),
    (
        "mnist1d_multitask",
        "Multi-task learning over seeds 0–2",
        ["digit_accuracy", "parity_accuracy", "large_accuracy", "slope_mse"],
    ),
]


def _seeded(name: str, title: str, metrics: list[str]) -> list[str]:
    dirs = [name] + [f"{name}_seed{s}" for s in (1, 2)]
    paths = [os.path.join(ROOT, "runs", d, "report.json") for d in dirs]
    if not all(os.path.exists(p) for p in paths):
        return []
    reports = [json.load(open(p))["rows"] for p in paths]
    lines = [
        f"### {title}\n",
        f"`scripts/more_seeds.sh {name}` (seeds 1, 2) beside seed 0; mean ± std over the seeds, "
        "then the three values.\n",
        "| name | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    for row in reports[0]:
        cells = []
        for m in metrics:
            values = [r.get(m) for rows in reports for r in rows if r["name"] == row["name"]]
            if len(values) != 3 or any(not isinstance(v, int | float) for v in values):
                cells.append("")
                continue
            digits = 0 if m.endswith("bytes") else 4
            shown = " / ".join(f"{v:.{digits}f}" for v in values)
            if digits:
                cells.append(
                    f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
                    f" ({shown})"
                )
            else:
                cells.append(shown)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return lines + [""]


def section() -> str:
    out = [_machine()]
    bench = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    if os.path.exists(bench):
        text = open(bench).read().split("\n", 1)[1].strip()
        # The machine is named once, above; keep the table and what its numbers mean.
        text = text.replace(text.split("Each value", 1)[0], "", 1) if "Each value" in text else text
        out += ["### Speed and size ratios (`make bench`)\n", text, ""]
    paper = os.path.join(ROOT, "runs", "paper", "paper_table.md")
    if os.path.exists(paper):
        out += ["### The MNIST-1D paper's table (`scripts/paper_table.sh`)\n", open(paper).read()]
    for name, title, columns in RUNS:
        path = os.path.join(ROOT, "runs", name, "report.json")
        if not os.path.exists(path):
            continue
        report = json.load(open(path))
        out.append(f"### {title}\n")
        out.append(f"`jaxopt-ft --config=configs/{name}.py --workdir=runs/{name}`\n")
        out.append(_rows(report["rows"], columns))
        for key, value in report.items():
            if key in ("experiment", "dataset", "model", "rows", "plots", *SKIP_KEYS):
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in SKIP_KEYS}
            if not _extra(value):
                continue
            out.append(f"`{key}`: `{json.dumps(value)}`\n")
        dest = os.path.join(ROOT, "docs", "results", name)
        for plot in report.get("plots", []):
            src = os.path.join(ROOT, "runs", name, plot)
            if os.path.exists(src):
                os.makedirs(dest, exist_ok=True)
                shutil.copy(src, os.path.join(dest, plot))
                out.append(f"![{plot}](docs/results/{name}/{plot})\n")
    for name, title, metrics in SEEDED:
        out += _seeded(name, title, metrics)
    return "\n".join(out)


def main() -> None:
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    start, end = "<!-- results -->", "<!-- /results -->"
    if start not in text:
        sys.exit("README.md has no '<!-- results -->' marker")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else rest
    new = f"{head}{start}\n{section()}\n{end}{tail}"
    with open(readme, "w") as f:
        f.write(new)
    print("README.md results section updated")


if __name__ == "__main__":
    main()
