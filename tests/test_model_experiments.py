"""The table runner: cells, parallel jobs, results files (tiny subsets, two cells)."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("torch")

from model.experiments import PROTOCOLS, TABLES, cells, loss_curves, main  # noqa: E402


def test_cells_cover_every_table_entry():
    for table, spec in TABLES.items():
        for protocol in PROTOCOLS if table != "table3" else ("allbm",):
            todo = cells(table, "reduced", Path("runs"), [], protocol)
            assert todo[0]["method"] == "classical"
            assert len(todo) == 1 + len(spec["rows"]) * len(spec["columns"])
            # a swap cell comes after the cell it is swapped from
            names = [c["out"].name for c in todo]
            for c in todo:
                if "swap_from" in c:
                    assert names.index(c["swap_from"]) < names.index(c["out"].name)


def test_table3_two_stage_cells_refit_the_switch_as_they_were_run():
    from model.experiments import cells_table3
    from model.train_cifar import parse_args

    two = [c for c in cells_table3("cpu", Path("runs"), [], None) if "two_stage" in c["argv"]]
    assert two
    for c in two:
        assert c["argv"][c["argv"].index("--switch-refit") + 1] == "teacher"
    assert parse_args(["--method", "two_stage", "--teacher", "t.pt"]).switch_refit == "none"


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_authors_protocol_cells(table):
    """Authors: the classifier kept classical, alpha learned from 1 (no annealing) except in
    the LSE-MAX cells (annealed to 64, the switch keeping the weights), the KD losses
    normalised with a temperature (the 4-BM KD cells' layers before the ReLU), Table 1's direct
    cells at the classical init's spread, own run folders; all-BM: none of that, and its
    LSE-MAX cells refit the switch to the teacher as they were run."""
    authors = cells(table, "reduced", Path("runs"), [], "authors")
    allbm = cells(table, "reduced", Path("runs"), [], "allbm")
    assert authors[0]["out"] == allbm[0]["out"] == Path("runs") / table / "classical"
    for c in authors[1:]:
        assert c["out"].parent == Path("runs") / table / "authors"
        if "swap_from" in c:
            continue
        a = c["argv"]
        assert a[a.index("--keep") + 1] == "5"
        assert a[a.index("--refit-gain") + 1] == "auto"
        assert "--last-op" not in a
        # section 4.1's layer terms before the ReLU, in the 4-BM KD cells only
        assert ("--kd-layers" in a) == (c["method"] == "kd" and table == "table1"), a
        if "--kd-layers" in a:
            assert a[a.index("--kd-layers") + 1] == "pre"
        if "two_stage" in a:
            assert a[a.index("--alpha-end") + 1] == "64" and "--learn-alpha" not in a
            assert a[a.index("--switch-refit") + 1] == "none"
            if c["method"] == "lwkd":  # its hard-max stage as MAX / lwkd's final epochs
                m = next(d["argv"] for d in authors if d["out"].name == "max_lwkd")
                assert a[a.index("--stage2-loss") + 1] == "logits"
                assert a[a.index("--epochs") + 1] == m[m.index("--final-epochs") + 1]
                assert a[a.index("--final-lr") + 1] == m[m.index("--final-lr") + 1]
            else:
                assert "--stage2-loss" not in a
            continue
        assert "--alpha-end" not in a
        smooth = "--op" not in a or a[a.index("--op") + 1] != "max"
        assert ("--learn-alpha" in a) == smooth, a
        assert ("--kd-norm" in a) == (c["method"] in ("kd", "lwkd")), a
        assert ("--refit-target" in a) == (c["method"] in ("layerwise", "layerwise_freeze"))
        if "--refit-target" in a:
            assert a[a.index("--refit-target") + 1] == "self"
        # 4-BM from scratch starts at the classical init's spread; 1.5-BM needs no scaling
        spread = c["method"] == "direct" and table == "table1"
        assert ("--direct-init" in a) == spread, a
        if spread:
            assert a[a.index("--direct-init") + 1] == "spread"
    for c in allbm[1:]:
        assert c["out"].parent == Path("runs") / table
        assert "--keep" not in c["argv"] and "--learn-alpha" not in c["argv"]
        assert "--refit-gain" not in c["argv"] and "--direct-init" not in c["argv"]
        assert "--refit-target" not in c["argv"]
        if "two_stage" in c["argv"]:
            assert c["argv"][c["argv"].index("--switch-refit") + 1] == "teacher"


def test_loss_curves_from_a_log():
    log = ("[00:00:01 +  1s] kd epoch 1/2: loss 3.5 test acc 0.5 (1s)\n"
           "[00:00:02 +  2s] layer 0 epoch 1/2: loss 1.25 student-path test acc 0.9 (1s)\n"
           "[00:00:03 +  3s] kd epoch 2/2: loss 2.0 test acc 0.6 (1s)\n"
           "[00:00:04 +  4s] kd epoch 2/2: loss 1.5 test acc 0.6 (1s)\n")  # resumed: last wins
    assert loss_curves(log) == {"kd": [3.5, 1.5], "layer 0": [1.25]}


def _common(tmp_path, mnist_dir):
    return ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
            "--schedule", "reduced", "--train-limit", "128", "--test-limit", "64",
            "--data-dir", str(mnist_dir.parent)]


def _by(entries):
    return {(e["row"], e["method"], e["protocol"]): e for e in entries}


def test_table2_two_cells_in_parallel(tmp_path: Path, mnist_dir):
    common = _common(tmp_path, mnist_dir)
    entries = main(["table2", "--protocol", "allbm", "--only", "max_direct,lse_direct",
                    "--jobs", "2", *common])
    by = _by(entries)
    assert len(entries) == 19  # every cell of both protocols is listed, run or not
    for key in [("classical reference", "classical", "classical"),
                ("1.5-BM MAX", "direct", "allbm"), ("1.5-BM LSE", "direct", "allbm")]:
        assert 0 <= by[key]["accuracy"] <= 1, key
        assert by[key]["command"].startswith("python -m model.train")
    assert by[("1.5-BM MAX", "lwkd", "allbm")]["accuracy"] is None
    assert by[("1.5-BM MAX", "direct", "authors")]["accuracy"] is None
    saved = json.loads((tmp_path / "res" / "table2.json").read_text())
    assert saved == json.loads(json.dumps(entries))
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "| 1.5-BM MAX | not run / 0." in md
    # a started cell (a checkpoint, no result) is told apart from one never started
    (tmp_path / "runs" / "table2" / "max_kd").mkdir(parents=True)
    (tmp_path / "runs" / "table2" / "max_kd" / "ckpt.pt").write_bytes(b"")
    by = _by(main(["table2", "--collect", *common]))
    assert by[("1.5-BM MAX", "kd", "allbm")]["status"] == "unfinished (checkpoint)"
    assert "status" not in by[("1.5-BM MAX", "lwkd", "allbm")]
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "not run / unfinished (checkpoint) / 0.9786" in md
    # a cell resumed on another device: the table says how long each part ran where
    done = tmp_path / "runs" / "table2" / "max_kd"
    (done / "result.json").write_text(json.dumps({
        "accuracy": 0.5, "wall_s": 3700.0,
        "segments": [{"device": "cpu", "wall_s": 3600.0}, {"device": "cuda", "wall_s": 100.0}],
    }))
    from model.train.cli import parse_args

    argv = shlex.split(by[("1.5-BM MAX", "kd", "allbm")]["command"])[3:]
    (done / "config.json").write_text(json.dumps({**asdict(parse_args(argv)), "device": "cuda"}))
    by = _by(main(["table2", "--collect", *common]))
    assert by[("1.5-BM MAX", "kd", "allbm")]["device"] == "cpu + cuda"
    assert by[("1.5-BM MAX", "kd", "allbm")]["wall_s_by_device"] == {"cpu": 3600.0, "cuda": 100.0}
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "not run / 0.5000 (62 min: cpu 60 min, cuda 2 min) / 0.9786" in md
    assert "device: cpu, cuda)" in md


def test_table2_authors_kd_cell(tmp_path: Path, mnist_dir):
    """One authors' cell end to end: a given teacher, the classifier classical, the learned
    alpha recorded, the loss curve collected."""
    common = _common(tmp_path, mnist_dir)
    main(["table2", "--protocol", "allbm", "--only", "classical", *common])
    teacher = tmp_path / "runs" / "table2" / "classical" / "model.pt"
    by = _by(main(["table2", "--only", "lse_kd", "--teacher", str(teacher), *common]))
    e = by[("1.5-BM LSE", "kd", "authors")]
    assert 0 <= e["accuracy"] <= 1
    assert len(e["alphas"]) == 5 and all(a is not None and a > 0 for a in e["alphas"])
    assert set(e["loss_curves"]) == {"kd"} and len(e["loss_curves"]["kd"]) == 2
    assert "converged" in e
    res = json.loads((tmp_path / "runs" / "table2" / "authors" / "lse_kd" / "result.json")
                     .read_text())
    assert res["forms"] == ["bm15"] * 5 + ["classical"]


def test_missing_teacher_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--teacher .*: no such file"):
        main(["table2", "--teacher", str(tmp_path / "none.pt"), "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--readme .*: no such file"):
        main(["table2", "--collect", "--readme", str(tmp_path / "none.md"), "--runs-dir",
              str(tmp_path), "--results-dir", str(tmp_path / "res")])
    assert not (tmp_path / "res").exists()  # nothing written before the check


def test_a_cell_trained_under_an_older_recipe_is_marked_stale(tmp_path: Path):
    """A finished cell whose recorded configuration (config.json, else the log's start line)
    differs from its command's now is stale: the table marks it and lists what differs.
    Options added later compare as what runs did before them."""
    from model.experiments import recipe_drift, write_results
    from model.train.cli import parse_args

    runs = tmp_path / "runs"
    t1 = {c["out"].name: c for c in cells("table1", "reduced", runs, [], "authors")}
    c = t1["max_kd"]
    assert recipe_drift(c) == {}  # not trained
    c["out"].mkdir(parents=True)
    (c["out"] / "result.json").write_text(json.dumps({"accuracy": 0.9}))
    rec = asdict(parse_args(c["argv"]))
    (c["out"] / "config.json").write_text(json.dumps(rec))
    assert recipe_drift(c) == {}
    (c["out"] / "config.json").write_text(json.dumps({**rec, "kd_layers": "post"}))
    assert recipe_drift(c) == {"kd_layers": ["post", "pre"]}
    # no config.json: the log's start line; a run from before --kd-layers compared after the ReLU
    (c["out"] / "config.json").unlink()
    old = {k: v for k, v in rec.items() if k != "kd_layers"}
    (c["out"] / "train.log").write_text(f"[10:00:00 +  0s] kd: {json.dumps(old)}\nepoch 1\n")
    assert recipe_drift(c) == {"kd_layers": ["post", "pre"]}
    # the all-BM LSE-MAX cells were trained before --switch-refit, which then refitted
    t2 = {c["out"].name: c for c in cells("table2", "reduced", runs, [], "allbm")}
    c2 = t2["lse-max_kd"]
    c2["out"].mkdir(parents=True)
    (c2["out"] / "result.json").write_text(json.dumps({"accuracy": 0.9}))
    rec2 = {k: v for k, v in asdict(parse_args(c2["argv"])).items() if k != "switch_refit"}
    (c2["out"] / "config.json").write_text(json.dumps(rec2))
    assert recipe_drift(c2) == {}
    # direct training reads no refit option: one recorded before --refit-gain is not stale
    c3 = next(c for c in cells("table2", "reduced", runs, [], "authors")
              if c["out"].name == "lse_direct")
    assert c3["argv"][c3["argv"].index("--refit-gain") + 1] == "auto"
    c3["out"].mkdir(parents=True)
    (c3["out"] / "result.json").write_text(json.dumps({"accuracy": 0.9}))
    rec3 = {k: v for k, v in asdict(parse_args(c3["argv"])).items() if k != "refit_gain"}
    (c3["out"] / "config.json").write_text(json.dumps(rec3))
    assert recipe_drift(c3) == {}
    (c3["out"] / "config.json").write_text(json.dumps({**rec3, "lr": 0.5}))
    assert recipe_drift(c3) == {"lr": [0.5, 0.001]}
    entry = {"row": "4-BM (hard max)", "method": "kd", "protocol": "authors", "accuracy": 0.9,
             "paper": 0.9893, "schedule": "paper", "stale": recipe_drift(c)}
    write_results("table1", [entry], tmp_path / "res")
    md = (tmp_path / "res" / "table1.md").read_text()
    assert "0.9000 (stale) / - / 0.9893" in md
    assert "- 4-BM (hard max) / kd (authors): trained with `kd_layers` 'post', now 'pre'." in md


def test_diagnostics_list_the_authors_cells_that_miss_the_goal(tmp_path: Path):
    """results/<table>.md gets a diagnostic for an authors' cell below 0.90 or more than 1 pp
    from the paper (below or above it), with what its run measured, and none for a cell on
    target, for an all-BM cell, or where the paper's own figure is at chance."""
    from model.experiments import write_results

    def cell(row, method, acc, protocol="authors", **kw):
        return {"row": row, "method": method, "protocol": protocol, "accuracy": acc,
                "paper": TABLES["table2"]["rows"][row][1][["direct", "kd", "lwkd"].index(method)],
                "schedule": "paper", **kw}

    entries = [
        {"row": "classical reference", "method": "classical", "protocol": "classical",
         "accuracy": 0.9939, "paper": 0.9901, "schedule": "paper"},
        cell("1.5-BM MAX", "lwkd", 0.1135, per_layer_accuracy=[0.9896, 0.1135],
             loss_curves={"layer 4": [3.5049, 3.4904]}),
        cell("1.5-BM LSE-MAX", "kd", 0.7807, accuracy_lse=0.994, accuracy_lse_max=0.0974),
        cell("1.5-BM LSE", "kd", 0.9942, alphas=[1.0, 1.0]),  # within 1 pp of 0.9998
        cell("1.5-BM MAX", "direct", 0.9131),  # the paper's figure is at chance
        cell("1.5-BM MAX", "kd", 0.1785, protocol="allbm"),
        cell("1.5-BM LSE", "direct", 0.9873),  # the paper's 0.1486 is at chance
        {**cell("1.5-BM LSE", "lwkd", 0.9950), "paper": 0.9700, "per_layer_accuracy": [0.99]},
    ]
    write_results("table2", entries, tmp_path)
    diag = (tmp_path / "table2.md").read_text().split("## Diagnostics")[1]
    lines = [x for x in diag.splitlines() if x.startswith("- ")]
    assert len(lines) == 3
    assert "LSE / lwkd: 0.9950" in lines[2] and "2.5 pp above the paper" in lines[2]
    assert "above the paper" not in lines[0] + lines[1]
    assert "MAX / lwkd: 0.1135" in lines[0] and "0.9896, 0.1135" in lines[0]
    assert "layer 4 3.505 -> 3.49" in lines[0]
    assert "LSE-MAX / kd: 0.7807" in lines[1] and "switched to the hard max 0.0974" in lines[1]


def test_a_whole_table_in_one_run_records_its_wall_time(tmp_path: Path):
    """run_cells records the wall time of a run that trained every cell from empty folders
    (not of one that resumed a cell), the table states it, and --collect's README block is
    regenerated between its markers."""
    from types import SimpleNamespace

    from model.experiments import timing_path, write_readme_table, write_results
    from model.experiments.runner import run_cells

    def todo(root):
        out = [{"row": "classical reference", "method": "classical", "given": "t.pt",
                "out": root / "classical"}]
        for name in ("max_direct", "max_kd"):  # a stand-in command that exits 0 at once
            out.append({"row": "1.5-BM MAX", "method": name[4:], "protocol": "authors",
                        "out": root / "authors" / name, "argv": [], "module": "platform",
                        "shown": name})
        return out

    args = SimpleNamespace(jobs=2, nproc=1, device="cpu", data_dir=None)
    cells_ = todo(tmp_path / "a")
    run_cells("table2", cells_, None, args)
    rec = json.loads(timing_path(cells_[1:]).read_text())
    assert timing_path(cells_[1:]) == tmp_path / "a" / "authors" / "authors_timing.json"
    assert rec["cells"] == 2 and rec["jobs"] == 2 and rec["wall_s"] >= 0 and rec["cores"] >= 1
    # the stand-in cells write no result: the record names its folder and no accuracy
    assert rec["runs_dir"] == str(tmp_path / "a" / "authors") and rec["accuracies"] == {}
    resumed = todo(tmp_path / "b")
    (resumed[1]["out"]).mkdir(parents=True)
    (resumed[1]["out"] / "ckpt.pt").write_bytes(b"")
    run_cells("table2", resumed, None, args)
    assert not timing_path(resumed[1:]).exists()

    entries = [{"row": "1.5-BM MAX", "method": "kd", "protocol": "authors", "accuracy": 0.95,
                "paper": 0.9786, "schedule": "paper", "wall_s": 60.0}]
    timed = {**rec, "wall_s": 7200.0, "runs_dir": "runs/timed", "accuracies": {"max_kd": 0.95}}
    write_results("table2", entries, tmp_path / "res", {"authors": timed})
    md = (tmp_path / "res" / "table2.md").read_text()
    assert "One run of the authors' protocol's 2 cells: **2.0 h** (7,200 s; 2 jobs on" in md
    assert "That run's cells (`runs/timed`): max_kd 0.9500." in md  # a record from a rerun
    write_results("table2", entries, tmp_path / "res")
    assert "not been trained in one run yet" in (tmp_path / "res" / "table2.md").read_text()

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results/table2.md begin -->\nold\n<!-- results/table2.md end "
                      "-->\ntail\n")
    assert write_readme_table("table2", tmp_path / "res", readme)
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("<!-- results/table2.md end -->\ntail\n")
    assert "| 1.5-BM MAX | - / - / 0.0926 | 0.9500 (60 s, cpu) / - / 0.9786 |" in text
    assert "## Diagnostics" not in text and "Schedule: paper" in text
    assert "(Diagnostics: [results/table2.md](results/table2.md).)" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not write_readme_table("table2", tmp_path / "res", plain)
    assert plain.read_text() == "no markers\n"
