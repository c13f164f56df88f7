"""Scale: the `invert-dataset` flow's own cost per image as the number of images grows (issue 18).

    .venv/bin/python benchmarks/scale.py --sizes 100 1000 --json benchmarks/results/scale-local.json
    .venv/bin/python benchmarks/scale.py --sizes 100 1000 --store s3 --json benchmarks/results/scale-s3.json
    .venv/bin/python benchmarks/scale.py --sizes 100 1000 --before 2987fd1     # and the code of a commit, first

The real flow, on the real components, all on 127.0.0.1: Prefect's temporary API, a 2-worker Dask LocalCluster (one
thread each, warmed: the generator loaded) reached through ``dask_address``, a local folder or moto's S3 server, a
sqlite MLflow store. N seeded 32 px pictures of the shapes domain, ``builtin-random:32``, ``wplus`` with one pivot
step, ``--batch-size`` images per task (64, what a GPU worker takes): the inversion is made tiny so that what is
measured is the pipeline around it.

Per N, three runs into one output folder, each flow in its own Python process (its peak memory is the flow's):

    first     nothing done yet: every image computed
    rerun     the same run again: nothing to compute
    half      into another folder that a run of the first half of the images (``limit``, not timed) filled

For each run: ``wall`` (the flow call, from the flow process; its imports are not in it), ``compute`` (the rows'
``seconds``: the inversion's timed stages and the metrics, of the images computed), the pipeline overhead per image
``(wall x workers - compute) / N`` (N = every listed image, computed or not), split by the Prefect API's timestamps
into ``start`` (flow run start to the flow's "N image(s) x ... kept" log line: listing, resume check, configs),
``dispatch`` (that line to the first task run's start), ``tasks`` (first task start to last task end, wall), ``end``
(last task end to the flow run's end: the tables, the preview grid, MLflow); the flow process's peak RSS; Prefect
task runs and log records of the flow run; files written into the output per image; MLflow artifact files.

``--before COMMIT`` measures the code of COMMIT first (a git worktree of it, with its own cluster and services: this
file is copied into it and run there), then this checkout's, and adds the ratios (this / COMMIT) of each figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # tests.support, when run as a script

from tests.support.faults import SPEC, write_shapes  # noqa: E402

WORKERS = 2
BUCKET = "scale"


def child(spec: dict) -> None:
    """The flow, run once in this process; prints one JSON line of what the parent cannot see from outside."""
    from flows.invert_dataset import invert_dataset
    from flows.parameters import ClusterSettings, InversionSettings

    t0 = time.perf_counter()
    state = invert_dataset(input_uri=spec["input"], output_uri=spec["output"], checkpoint=SPEC, method="wplus",
                           inversion=InversionSettings(pivot_steps=1, batch_size=spec["batch_size"]),
                           cluster=ClusterSettings(dask_address=spec["scheduler"]),
                           mlflow_tracking_uri=spec["mlflow"], limit=spec.get("limit"), return_state=True)
    wall = time.perf_counter() - t0
    summary = state.result(raise_on_failure=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # KiB on Linux
    if isinstance(summary, BaseException):      # the run failed as a whole: what it said, for the report
        error = f"{type(summary).__name__}: {str(summary)[:300]}"
        print("SCALE " + json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "wall": wall,
                                     "peak_rss_mb": rss, "state": state.name, "error": error}), flush=True)
        return
    print("SCALE " + json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "wall": wall,
                                 "peak_rss_mb": rss, "state": state.name,
                                 "summary": {k: summary.get(k) for k in ("images", "ok", "failed", "skipped",
                                                                         "computed")}}), flush=True)


def _run_flow(spec: dict, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SCALE ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"the flow process failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("SCALE "):])


def _prefect_figures(flow_run_id: str) -> dict:
    """Task runs, log records and the phase split of one flow run, from the Prefect API."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from tests.support.prefect_api import _paged, flow_run_ids

    ids = flow_run_ids(UUID(flow_run_id))
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        logs = _paged(lambda **page: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
                                                      **page))
        tasks = _paged(lambda **page: client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), **page))
    start, end = run.start_time, run.end_time
    listed = next((log.timestamp for log in logs if "result(s) kept from earlier runs" in log.message), None)
    invert = [t for t in tasks if t.name.startswith("invert-") and t.start_time and t.end_time]
    first = min((t.start_time for t in invert), default=None)
    last = max((t.end_time for t in invert), default=None)

    def span(a, b) -> float | None:
        return round((b - a).total_seconds(), 3) if a is not None and b is not None else None

    return {"task_runs": len(tasks), "log_records": len(logs),
            "tasks_run_seconds": round(sum(t.total_run_time.total_seconds() for t in invert), 2),
            "phases": {"start": span(start, listed), "dispatch": span(listed, first), "tasks": span(first, last),
                       "end": span(last or listed, end)}}


def _files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _output_files(uri: str) -> int:
    from gani_core import storage

    fs, path = storage.resolve(uri)
    return sum(1 for name in fs.find(path) if not name.endswith("mlflow.db"))


def _compute_seconds(uri: str, done_before: set[str]) -> float:
    """The inversion seconds (the rows' ``seconds``) of the images a run computed: all but ``done_before``."""
    from gani_core import storage

    rows = storage.read_parquet(storage.join(uri, "metrics.parquet")).to_pylist()
    return float(sum(r["seconds"] or 0.0 for r in rows if r["image_id"] not in done_before))


def _image_ids(uri: str) -> set[str]:
    from gani_core import storage

    return {r["image_id"] for r in storage.read_parquet(storage.join(uri, "metrics.parquet")).to_pylist()}


RUNS = ("first", "rerun", "half")


def measure(n: int, store: str, batch_size: int, work: Path, scheduler: str, env: dict[str, str],
            runs: tuple[str, ...] = RUNS) -> dict:
    """The three runs of N images (the module's docstring); their figures."""
    from gani_core import storage

    base = f"s3://{BUCKET}" if store == "s3" else str(work)
    input_uri, output_uri = storage.join(base, f"in-{n}"), storage.join(base, f"out-{n}")
    write_shapes(input_uri, n)
    tracking = work / f"mlflow-{n}"         # tasks/mlflow_runs puts the artifacts beside the database: mlartifacts/
    tracking.mkdir()
    spec = {"input": input_uri, "output": output_uri, "batch_size": batch_size, "scheduler": scheduler,
            "mlflow": f"sqlite:///{tracking}/mlflow.db"}
    result: dict = {"images": n, "store": store, "batch_size": batch_size, "workers": WORKERS}
    artifacts_before = 0
    for name in runs:
        if name == "half":      # half done: the first half of the images run into a new folder, then all of them
            output_uri = storage.join(base, f"out-{n}-half")
            spec = {**spec, "output": output_uri}
            _run_flow({**spec, "limit": n // 2}, env)
            artifacts_before = _files(tracking / "mlartifacts")
        done = _image_ids(output_uri) if name == "half" else set()
        run = _run_flow(spec, env)
        if "error" in run:
            result[name] = {"state": run["state"], "error": run["error"], "wall": round(run["wall"], 2)}
            print(f"N={n} {store} {name}: failed: {run['error']}", file=sys.stderr, flush=True)
            break
        figures = _prefect_figures(run["flow_run_id"])
        compute = 0.0 if name == "rerun" else _compute_seconds(output_uri, done)
        artifacts = _files(tracking / "mlartifacts")
        result[name] = {
            **run["summary"], "state": run["state"], "wall": round(run["wall"], 2), "compute": round(compute, 2),
            "overhead_ms_per_image": round((run["wall"] * WORKERS - compute) / n * 1000, 2),
            "peak_rss_mb": round(run["peak_rss_mb"]), **figures,
            "output_files_per_image": round(_output_files(output_uri) / n, 2),
            "mlflow_artifact_files": artifacts - artifacts_before,
        }
        artifacts_before = artifacts
        print(f"N={n} {store} {name}: " + json.dumps(result[name]), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--store", choices=("local", "s3"), default="local")
    p.add_argument("--batch-size", type=int, default=64, help="images per task (default: 64)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                   help="which runs per N (default: all three; first is always run)")
    p.add_argument("--before", default=None, metavar="COMMIT",
                   help="measure the code of COMMIT first, in the same run, and report the ratios against it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    before = _measure_commit(args) if args.before else None

    from tests.support.dask_cluster import local_cluster
    from tests.support.prefect_api import services_environment, temporary_prefect_api
    from tests.support.s3 import s3_service

    services_environment()
    from gani_core.checkout import code_version
    from gani_core.checkpoints.ref import resolve_checkpoint
    from tasks.inversion import warm_worker

    results = []
    with tempfile.TemporaryDirectory(prefix="gani-scale-") as tmp:
        work = Path(tmp)
        s3 = s3_service(BUCKET, work / "cache") if args.store == "s3" else contextlib.nullcontext()
        with s3, temporary_prefect_api() as api, local_cluster(api, n_workers=WORKERS) as client:
            client.run(warm_worker, resolve_checkpoint(SPEC))
            env = {**os.environ, "PREFECT_API_URL": api}
            for n in args.sizes:
                runs = tuple(r for r in RUNS if r in {"first", *args.runs})
                results.append(measure(n, args.store, args.batch_size, work, client.scheduler.address, env, runs))
    report = {"benchmark": "scale", "code_version": code_version(), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "results": results}
    if before is not None:
        report["before"] = before
        report["ratios"] = _ratios(before["results"], results)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def _measure_commit(args: argparse.Namespace) -> dict:
    """This benchmark with the same sizes on the code of ``args.before``: a worktree of it, this file copied in."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="gani-scale-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before], check=True,
                       capture_output=True)
        try:
            shutil.copy(__file__, tree / "benchmarks" / "scale.py")
            out = Path(tmp) / "before.json"
            cmd = [sys.executable, str(tree / "benchmarks" / "scale.py"), "--sizes", *map(str, args.sizes),
                   "--store", args.store, "--batch-size", str(args.batch_size), "--runs", *args.runs,
                   "--json", str(out)]
            subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
            return {"commit": args.before, **json.loads(out.read_text())}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


RATIO_FIGURES = ("wall", "overhead_ms_per_image", "peak_rss_mb", "log_records", "task_runs",
                 "output_files_per_image", "mlflow_artifact_files")


def _ratios(before: list[dict], after: list[dict]) -> list[dict]:
    """Each figure of each run, this code's over the earlier code's (below 1: less)."""
    out = []
    for b, a in zip(before, after, strict=True):
        entry: dict = {"images": a["images"]}
        for run in (r for r in RUNS if r in a and r in b and "error" not in a[r] and "error" not in b[r]):
            entry[run] = {k: round(a[run][k] / b[run][k], 3) if b[run][k] else None for k in RATIO_FIGURES}
        out.append(entry)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
