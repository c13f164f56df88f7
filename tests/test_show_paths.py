"""Commands given what is not a run folder (a file, nothing, an edits folder, damaged tables), and gani show's table
of rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from gani_core.cli import common, main
from gani_core.metric_registry import names

TAKES = "give a run folder (the --out of gani invert, or a flow's output_uri)"


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_gani_show_of_a_file_says_it_takes_a_run_folder_in_one_line(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "metrics.parquet"
    table.write_bytes(b"PAR1")
    assert main(["show", str(table)]) == 2
    assert _err_lines(capsys) == [f"gani show: error: {table} is a file; {TAKES}"]


def test_gani_show_of_a_path_that_does_not_exist_says_so_in_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert _err_lines(capsys) == [f"gani show: error: {tmp_path}/missing: no such folder; {TAKES}"]


def _rows(identity: float | None) -> list[dict]:
    ok = {"image_id": "astronaut", "method": "w", "status": "ok", "config_hash": "eb2117fb00", "lpips": 0.5,
          "id_similarity": identity, "id_similarity_pivot": identity, "source": "in/astronaut.png"}
    failed = {"image_id": "coffee", "method": "w", "status": "failed", "error": "NoFaceError: coffee.jpg: no face"}
    return [ok, failed]


def test_the_identity_columns_are_hidden_only_when_no_row_has_one(capsys: pytest.CaptureFixture[str]) -> None:
    """gani show's and gani invert's table (common.print_rows)."""
    assert common.hidden_columns(_rows(None)) == names("faces")
    assert common.hidden_columns(_rows(0.84)) == ()
    common.print_rows(_rows(0.84), with_config=True)
    full = capsys.readouterr().out
    assert "id_similarity_pivot" in full.splitlines()[0]
    common.print_rows(_rows(None), with_config=True)
    hidden = capsys.readouterr().out
    assert "id_similarity" not in hidden and hidden.splitlines()[-1] == full.splitlines()[-1]
    assert hidden.splitlines()[0].split() == [c for c in full.splitlines()[0].split() if c not in names("faces")]
    # A face run whose renders hold no face: the columns stay (`-`), and the reason is said under the table.
    no_face = [{**_rows(None)[0], "id_note": "the tuned render: no face found"}, _rows(None)[1]]
    assert common.hidden_columns(no_face) == ()
    common.print_rows(no_face, with_config=True)
    said = capsys.readouterr().out.splitlines()
    assert "id_similarity" in said[0]
    assert "no id_similarity: astronaut [w]: the tuned render: no face found" in said


@pytest.mark.parametrize("command", ["show", "edit", "export"])
def test_every_command_that_reads_a_run_refuses_a_file_in_one_line(command: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "metrics.parquet"
    table.write_bytes(b"PAR1")
    extra = {"show": [], "edit": ["--direction", "factor:hue", "--strengths", "1"],
             "export": ["img", "--out", str(tmp_path / "g.safetensors")]}[command]
    assert main([command, str(table), *extra]) == 2
    assert _err_lines(capsys) == [f"gani {command}: error: {table} is a file; {TAKES}"]
