"""The domain-inversion benchmark in one process: every method of a suite on every set, with intervals.

    .venv/bin/python benchmarks/domain_inversion.py --suite smoke             # seconds: the wiring
    .venv/bin/python benchmarks/domain_inversion.py --suite session           # ~40 min on a 2-core CPU
    .venv/bin/python benchmarks/domain_inversion.py --suite cpu-night         # a night on a 2-core CPU
    .venv/bin/python benchmarks/domain_inversion.py --suite full --device cuda
    .venv/bin/python benchmarks/domain_inversion.py --suite session --split dev --methods gani gani-lowrank pti

Suites, sets and methods: gani_core/evaluation/suites.py. Each (set, seed) is saved as it finishes under
``OUT/parts/``, so a rerun continues where an interrupted one stopped (delete OUT to start over). At the end it
writes the report (gani_core/evaluation/report.py: rows.parquet, summary.parquet, comparisons.json, goals.json,
curves.png, report.md) to ``OUT`` (default benchmarks/results/domain-SUITE-SPLIT). The ``domain-benchmark`` flow
runs the same suites on Dask and logs them to MLflow.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from gani_core.checkout import REPO
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.evaluation.evaluate import evaluate_set
from gani_core.evaluation.report import write_report
from gani_core.evaluation.suites import BENCHMARK_METHODS, SUITES, get_suite, set_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="session", choices=sorted(SUITES))
    parser.add_argument("--split", default="test", choices=("dev", "test"))
    parser.add_argument("--sets", nargs="+", default=None, help="override the suite's sets")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"override the suite's methods: {', '.join(BENCHMARK_METHODS)}, or an ablation such as "
                             "'gani[reg_interval=4]' (tuning options overridden)")
    parser.add_argument("--count", type=int, default=None, help="override images per set")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = get_suite(args.suite)
    overrides = {k: v for k, v in (("sets", args.sets), ("methods", args.methods), ("count", args.count),
                                   ("seeds", args.seeds)) if v is not None}
    changed = f"; here with {', '.join(overrides)} overridden" if overrides else ""
    suite = replace(suite, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
                    description=suite.description + changed)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"domain-{suite.name}-{args.split}")
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    G = resolve_checkpoint(args.checkpoint).load(args.device)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for set_name in suite.sets:
        images, ids, _ = set_images(set_name, suite.count, G.img_resolution, args.split, REPO / "examples" / "photos")
        for seed in suite.seeds:
            part = parts / f"{set_name}-seed{seed}.json"
            if part.exists():
                rows += json.loads(part.read_text())
                print(f"{set_name} seed {seed}: kept from {part}")
                continue
            done = evaluate_set(G, images, ids, set_name, suite, seed, args.batch_size)
            part.write_text(json.dumps(done))
            rows += done
            print(f"  {time.perf_counter() - t0:.0f} s so far")
    header = (f"`benchmarks/domain_inversion.py --suite {args.suite} --split {args.split}` on {args.device} "
              f"({torch.get_num_threads()} threads), checkpoint {args.checkpoint}, batch {args.batch_size}.")
    report = write_report(rows, str(out), suite, args.split, header)
    print((out / "report.md").read_text())
    print("wrote", ", ".join(report.written.values()))


if __name__ == "__main__":
    main()
