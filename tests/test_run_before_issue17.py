"""A run folder written before issue 17 (tests/fixtures/run-before-issue17) is still read and resumed.

The fixture was written by gani before issue 17 renamed the tuning options (``locality_*`` -> ``reg_*``, ``kind`` ->
``form``) and changed the config hash's scheme, with:

    gani invert examples/shapes/shapes-2026-001.png --method gani w --pivot-steps 5 --tune-steps 3 --out DIR

Its rows carry scheme 1's hashes and its summary.json the old field names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from gani_core import load_generator
from gani_core.cli import main
from gani_core.invert import method_config

from .conftest import FIXTURES, REPO

OLD_RUN = FIXTURES / "run-before-issue17"
IMAGE = REPO / "examples" / "shapes" / "shapes-2026-001.png"
ARGV = ["--method", "gani", "w", "--pivot-steps", "5", "--tune-steps", "3"]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for sub in ("rows", "deltas", "previews")
            for p in sorted((run / sub).iterdir())}


def test_the_fixture_holds_scheme_1_hashes_and_names() -> None:
    rows = {p.name: json.loads(p.read_text()) for p in (OLD_RUN / "rows").iterdir()}
    for method, cfg in (("gani", method_config("gani", 5, 3)), ("w", method_config("w", 5))):
        stored = rows[f"shapes-2026-001.{method}.json"]["config_hash"]
        assert stored != cfg.config_hash() and stored in cfg.resume_hashes()
    summary = json.loads((OLD_RUN / "summary.json").read_text())
    assert "locality_weight" in summary["methods"]["gani"]["config"]["tune"]


def test_rerunning_its_command_keeps_every_result(old_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = _files(old_run)
    assert main(["invert", str(IMAGE), *ARGV, "--out", str(old_run), "--quiet"]) == 0
    assert "(2 ok, 0 failed, 2 kept from an earlier run)" in capsys.readouterr().err
    assert _files(old_run) == before                    # nothing computed again, nothing rewritten
    summary = json.loads((old_run / "summary.json").read_text())
    assert (summary["skipped"], summary["computed"], summary["ok"]) == (2, 0, 2)
    assert "reg_weight" in summary["methods"]["gani"]["config"]["tune"]     # the new summary: today's names
    table = pq.read_table(old_run / "metrics.parquet").to_pylist()
    assert [r["source"] for r in table] == [None, None]         # its rows have no `source` (issue 22): null


def test_show_and_export_read_it(old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(old_run)]) == 0
    shown = capsys.readouterr().out
    assert "shapes-2026-001" in shown and "gani" in shown and " w " in shown
    out = tmp_path / "tuned.safetensors"
    assert main(["export", str(old_run), "shapes-2026-001", "--out", str(out)]) == 0
    assert load_generator(out).img_resolution == 64
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["method"] == "gani"
