"""The table runner: cells, parallel jobs, results files (tiny subsets, two cells)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from model.experiments import TABLES, cells, main  # noqa: E402


def test_cells_cover_every_table_entry():
    for table, spec in TABLES.items():
        todo = cells(table, "reduced", Path("runs"), [])
        assert todo[0]["method"] == "classical"
        assert len(todo) == 1 + len(spec["rows"]) * len(spec["columns"])
        # a swap cell comes after the cell it is swapped from
        names = [c["out"].name for c in todo]
        for c in todo:
            if "swap_from" in c:
                assert names.index(c["swap_from"]) < names.index(c["out"].name)


def test_table2_two_cells_in_parallel(tmp_path: Path, mnist_dir):
    common = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
              "--schedule", "reduced", "--train-limit", "128", "--test-limit", "64",
              "--data-dir", str(mnist_dir.parent)]
    entries = main(["table2", "--only", "max_direct,lse_direct", "--jobs", "2", *common])
    by = {(e["row"], e["method"]): e for e in entries}
    assert len(entries) == 10  # every cell is listed, run or not
    for key in [("classical reference", "classical"), ("1.5-BM MAX", "direct"),
                ("1.5-BM LSE", "direct")]:
        assert 0 <= by[key]["accuracy"] <= 1, key
        assert by[key]["command"].startswith("python -m model.train")
    assert by[("1.5-BM MAX", "lwkd")]["accuracy"] is None
    saved = json.loads((tmp_path / "res" / "table2.json").read_text())
    assert saved == json.loads(json.dumps(entries))
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "| 1.5-BM MAX |" in md and "not run" in md
    # a started cell (a checkpoint, no result) is told apart from one never started
    (tmp_path / "runs" / "table2" / "max_kd").mkdir(parents=True)
    (tmp_path / "runs" / "table2" / "max_kd" / "ckpt.pt").write_bytes(b"")
    by = {(e["row"], e["method"]): e for e in main(["table2", "--collect", *common])}
    assert by[("1.5-BM MAX", "kd")]["status"] == "unfinished (checkpoint)"
    assert "status" not in by[("1.5-BM MAX", "lwkd")]
    assert "| 1.5-BM MAX | 0." in (tmp_path / "res" / "table2.md").read_text()
    assert "unfinished (checkpoint) / 0.9786" in (tmp_path / "res" / "table2.md").read_text()
    # a cell resumed on another device: the table says how long each part ran where
    done = tmp_path / "runs" / "table2" / "max_kd"
    (done / "result.json").write_text(json.dumps({
        "accuracy": 0.5, "wall_s": 3700.0,
        "segments": [{"device": "cpu", "wall_s": 3600.0}, {"device": "cuda", "wall_s": 100.0}],
    }))
    (done / "config.json").write_text(json.dumps({"device": "cuda"}))
    by = {(e["row"], e["method"]): e for e in main(["table2", "--collect", *common])}
    assert by[("1.5-BM MAX", "kd")]["device"] == "cpu + cuda"
    assert by[("1.5-BM MAX", "kd")]["wall_s_by_device"] == {"cpu": 3600.0, "cuda": 100.0}
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "0.5000 / 0.9786 (62 min: cpu 60 min, cuda 2 min)" in md
    assert "device: cpu, cuda)" in md
