"""``gani show``: a run folder's rows, what each configuration is (and which options differ between the
configurations of one method), and the means per method and configuration.

The identity columns (the registry's ``faces`` metrics: id_similarity, id_similarity_pivot) are shown only when a row
of the run has a value: a run without faces would show columns of ``-``. A path that is a file, or nothing, is
refused in one line (exit 2)."""

from __future__ import annotations

import argparse

from gani_core.cli.common import CONFIG_HASH_SHOWN, hidden_columns, print_rows
from gani_core.metric_registry import METRICS, names, summarise
from gani_core.run_folder import RunFolder


def run(args: argparse.Namespace) -> int:
    folder = RunFolder(args.run)
    stored = folder.read_run()
    summary = stored.summary
    hidden = hidden_columns(stored.rows)
    print(f"run {folder.uri}: {summary['generator_label']} ({summary['checkpoint']}), {summary['images']} image(s), "
          f"{summary['failed']} failed row(s)")
    if stored.incomplete_note:
        print(stored.incomplete_note)
    print_rows(stored.rows, with_config=True)
    print()
    print("configurations (the config column):")
    for method, info in summary["methods"].items():
        configs = info.get("configs") or {info.get("config_hash"): info.get("config")}
        for config_hash, config in configs.items():
            print(f"  {(config_hash or '-')[:CONFIG_HASH_SHOWN]}  {method:<8}  {describe_config(config)}")
        if len(configs) > 1:
            print(f"  {method}'s {len(configs)} configurations differ in: {differences(list(configs.values()))}")
    print()
    print("means over ok images:")
    widths = {n: max(16, len(n)) for n in names("run") if n not in hidden}
    print("  ".join(["method".ljust(8), "config".ljust(CONFIG_HASH_SHOWN), *(n.rjust(w) for n, w in widths.items())]))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in stored.rows:
        groups.setdefault((r["method"], (r.get("config_hash") or "-")[:CONFIG_HASH_SHOWN]), []).append(r)
    for (method, config_hash), rows in groups.items():
        means = {m: s["mean"] for m, s in summarise(rows, names("run")).items()}
        cells = [METRICS[n].format(means.get(n)).rjust(w) for n, w in widths.items()]
        print("  ".join([method.ljust(8), config_hash.ljust(CONFIG_HASH_SHOWN), *cells]))
    return 0


def describe_config(config: dict | None) -> str:
    """A stored configuration (configs/HASH.json, summary.json) in a few words: its step budgets, and what it did
    to faces (aligned, or id_similarity of aligned inputs)."""
    if not config:
        return "configuration not stored (written before configs/ existed)"
    tune = config.get("tune")
    steps = f"pivot {config['pivot']['steps']} steps, " + (f"tune {tune['steps']} steps" if tune else "no tuning")
    faces = f", faces aligned ({config['align']})" if config.get("align") else ""
    faces = faces or (", aligned faces (id_similarity)" if config.get("identity") else "")
    return f"{steps}, seed {config.get('seed')}{faces}"


def differences(configs: list[dict | None]) -> str:
    """The options whose values differ between ``configs`` (one method's), in their order: ``tune.steps 150 vs
    20``; the step budgets alone do not tell two configurations apart (a learning rate, a regulariser weight)."""
    known = [_flatten(c) for c in configs if c]
    missing = len(configs) - len(known)
    keys = sorted({k for flat in known for k in flat})
    found = [f"{k} {' vs '.join(_shown(flat.get(k)) for flat in known)}" for k in keys
             if len({repr(flat.get(k)) for flat in known}) > 1]
    text = ", ".join(found) if found else ("nothing stored" if not known else "no option (the same values)")
    return text + (f" ({missing} not stored, not compared)" if missing else "")


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
