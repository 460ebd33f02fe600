"""Runs every benchmarks/*.py, collects their JSON figure lines into results.json and RESULTS.md.

    python scripts/run_benchmarks.py [--only NAME ...]

Each benchmark prints one JSON line per figure: {"name", "value", "baseline", "ratio", "target",
"unit"}; values are medians over repeats and each ratio is taken against a baseline measured in
the same run. This script adds the machine description and writes
benchmarks/results.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def run_one(path: str) -> tuple[list[dict], float, str]:
    t0 = time.perf_counter()
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.run([sys.executable, path], capture_output=True, text=True, cwd=ROOT, env=env)
    figures = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "name" in rec and "ratio" in rec:
                rec["benchmark"] = os.path.basename(path)
                figures.append(rec)
    err = "" if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]
    return figures, time.perf_counter() - t0, " ".join(err) if err else ""


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(BENCH, "*.py")))
    if args.only:
        paths = [p for p in paths if os.path.basename(p)[:-3] in args.only]
    figures, failures = [], []
    for path in paths:
        print(f"running {os.path.relpath(path, ROOT)} ...", flush=True)
        figs, secs, err = run_one(path)
        for f in figs:
            print(f"  {f['name']}: ratio {f['ratio']:.3f} (target {f.get('target')})")
        if err:
            failures.append(f"{os.path.basename(path)}: {err}")
            print(f"  FAILED: {err}")
        figures.extend(figs)
    out = os.path.join(BENCH, "results.json")
    if args.only and os.path.exists(out):  # --only updates those files' figures, keeps the rest
        with open(out) as f:
            old = json.load(f)["figures"]
        ran = {os.path.basename(p) for p in paths}
        figures = [f for f in old if f.get("benchmark") not in ran] + figures
    result = {"machine": machine(), "figures": figures, "failures": failures}
    with open(os.path.join(BENCH, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    m = result["machine"]
    lines = [
        "# Benchmark results\n",
        f"Measured on {m['cpu']} ({m['cores']} cores, {m['backend']}), jax {m['jax']}, "
        f"Python {m['python']}. Each value is a median over repeats; each ratio is taken "
        "against its baseline measured in the same run.\n",
        "| figure | value | baseline | unit | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for fig in figures:
        target = fig.get("target")
        met = "—" if target is None else ("yes" if fig["ratio"] <= target else "no")
        if fig["name"] in ("structured_infer_vs_dense", "head_pruned_infer_vs_dense") and target:
            met = "yes" if fig["ratio"] < target else "no"
        lines.append(
            f"| `{fig['name']}` | {_fmt(fig.get('value'))} | {_fmt(fig.get('baseline'))} | "
            f"{fig.get('unit', '')} | {_fmt(fig['ratio'])} | {_fmt(target)} | {met} |"
        )
    if failures:
        lines.append("\nFailed: " + "; ".join(failures))
    with open(os.path.join(BENCH, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote benchmarks/results.json and benchmarks/RESULTS.md ({len(figures)} figures)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
