"""Reproduces the MNIST-1D paper's baseline table (logistic, MLP, CNN) over 3 seeds.

    python scripts/paper_table.py [--seeds 0 1 2] [--out runs/paper]

Runs `jaxopt-ft` with configs/mnist1d_{logistic,mlp,cnn}.py once per seed and writes
`paper_table.json` and `paper_table.md` (mean ± std of test accuracy beside the paper's numbers).
Finished runs are reused: re-running resumes and only reads their reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [("logistic", 0.32), ("mlp", 0.68), ("cnn", 0.94)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "paper"))
    args = parser.parse_args()
    rows = []
    for model, paper in MODELS:
        accs, params = [], None
        for seed in args.seeds:
            workdir = os.path.join(args.out, f"{model}_seed{seed}")
            cmd = [
                sys.executable,
                "-m",
                "jaxopt_ft.cli",
                f"--config={os.path.join(ROOT, 'configs', f'mnist1d_{model}.py')}",
                f"--workdir={workdir}",
                f"--config.seed={seed}",
                "--noprogress",
            ]
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            with open(os.path.join(workdir, "report.json")) as f:
                row = json.load(f)["rows"][0]
            accs.append(row["test_accuracy"])
            params = row["params"]
            print(f"{model} seed {seed}: {row['test_accuracy']:.3f}", flush=True)
        rows.append(
            {
                "name": model,
                "params": params,
                "test_accuracy": statistics.mean(accs),
                "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "seeds": args.seeds,
                "per_seed": accs,
                "paper": paper,
            }
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "paper_table.json"), "w") as f:
        json.dump({"dataset": "mnist1d", "rows": rows}, f, indent=2)
    lines = [
        f"| model | params | ours: test accuracy (mean ± std, {len(args.seeds)} seeds) | paper |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {100 * r['test_accuracy']:.1f} ± "
            f"{100 * r['test_accuracy_std']:.1f} % | {100 * r['paper']:.0f} % |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "paper_table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
