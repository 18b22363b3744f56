"""Running the cells: the teacher first, then ``--jobs`` at a time; the LSE -> max swaps."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["swap_to_max", "swap_to_max_cifar", "run_cells", "timing_extras", "timing_path",
           "recipe_drift", "recorded_config"]


# what a cell's run does not depend on: where it is written and read from, and how it ran
_RUN_ONLY = {"out", "data_dir", "threads", "progress", "device", "budget_s", "teacher", "extra"}
# options added after some cells were trained, with the method whose runs did otherwise before
# the option existed, and what they did (two_stage refitted the LSE -> max switch to the teacher)
_BEFORE_OPTION = {"switch_refit": ("two_stage", "teacher")}
# options a method does not read (direct training has no teacher, so nothing to refit to)
_UNREAD = {"direct": {"refit", "refit_gain", "refit_images", "refit_target"}}


def recorded_config(out: Path) -> dict | None:
    """A run's configuration: its ``config.json``, else the last one its ``train.log`` printed
    at a start (``[time] method: {...}``; some cells' folders kept only the log)."""
    if (out / "config.json").exists():
        return json.loads((out / "config.json").read_text())
    log = out / "train.log"
    starts = re.findall(r"^\[[^]]*\] \w+: (\{.*\})$", log.read_text(), re.M) if log.exists() else []
    return json.loads(starts[-1]) if starts else None


def recipe_drift(c: dict) -> dict[str, list]:
    """The training options in which a finished ``model.train`` cell's recorded
    configuration (:func:`recorded_config`) differs from the cell's command now, as
    ``{option: [trained, now]}``: a non-empty answer means the cell was trained under an
    older recipe and must be rerun to count. Empty for cells without a result or with nothing
    to compare (swaps, a given teacher, Table 3)."""
    from dataclasses import asdict

    from ..train.cli import parse_args
    from ..train.config import TrainConfig

    if (c.get("module", "model.train") != "model.train" or c.get("swap_from") or c.get("given")
            or not (c["out"] / "result.json").exists()):
        return {}
    had = recorded_config(c["out"])
    if had is None:
        return {}
    now = json.loads(json.dumps(asdict(parse_args(c["argv"]))))  # tuples as lists, as recorded
    default = json.loads(json.dumps(asdict(TrainConfig())))
    drift, method_now = {}, now["method"]
    for k, v in now.items():
        method, before = _BEFORE_OPTION.get(k, (None, None))
        old = had.get(k, before if had.get("method") == method else default.get(k))
        if k not in _RUN_ONLY | _UNREAD.get(method_now, set()) and old != v:
            drift[k] = [old, v]
    return drift


def swap_to_max(src: Path, dst: Path, data_dir: str | None) -> dict:
    """Evaluate ``src/model.pt`` with every BM layer's op replaced by the hard max."""
    import torch

    from ..maxops import MaxOp
    from ..train import TrainConfig, evaluate, load_data, load_model, net_to_dict

    net = load_model(src / "model.pt")
    for m in net.bm_layers():
        m.set_op(MaxOp("max"))
    _, _, xte, yte = load_data(TrainConfig(data_dir=data_dir))
    acc = evaluate(net.eval(), xte, yte)
    dst.mkdir(parents=True, exist_ok=True)
    res = {"accuracy": acc, "swapped_from": str(src)}
    torch.save({**net_to_dict(net), "result": res}, dst / "model.pt")
    (dst / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def swap_to_max_cifar(src: Path, dst: Path, data_dir: str | None, device: str = "cpu") -> dict:
    """:func:`swap_to_max` for a ResNet-22 run (scored on the source run's test images)."""
    import torch

    from ..maxops import MaxOp
    from ..train import net_to_dict
    from ..train_cifar import CifarConfig, evaluate, load_cifar_tensors, load_resnet

    net = load_resnet(src / "model.pt", device)
    for m in net.bm_layers():
        m.set_op(MaxOp("max"))
    src_res = json.loads((src / "result.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    cfg = CifarConfig(
        data_dir=data_dir,
        subset=1,
        test_subset=src_cfg.get("test_subset", 0),
        threads=src_cfg.get("threads", 1),
        device=device,
    )
    _, _, xte, yte = load_cifar_tensors(cfg)
    t0 = time.time()
    acc = evaluate(net, xte, yte)
    dst.mkdir(parents=True, exist_ok=True)
    res = {
        "accuracy": acc,
        "swapped_from": str(src),
        "wall_s": round(time.time() - t0, 1),
        "train_images": src_res.get("train_images"),
        "test_images": len(xte),
        "data": src_res.get("data"),
        "budget_hit": src_res.get("budget_hit"),
    }
    torch.save({**net_to_dict(net), "result": res}, dst / "model.pt")
    (dst / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    (dst / "config.json").write_text(json.dumps(src_cfg, indent=2) + "\n")
    return res


def timing_path(todo: list[dict]) -> Path:
    """Where :func:`run_cells` records a whole table trained in one run: beside the cells'
    folders (``runs/<table>/<protocol>_timing.json``)."""
    trained = [c for c in todo if c["method"] != "classical"]
    return trained[0]["out"].parent / f"{trained[0].get('protocol', 'cells')}_timing.json"


def timing_extras(todo: list[dict]) -> dict:
    """What a timing record says besides the time: the folder of the cells it timed and each
    cell's accuracy, so that the record still names its own figures when it is shown beside
    cells trained elsewhere (a rerun in ``--runs-dir runs/timed`` timing a table whose cells
    were trained over several sessions)."""
    trained = [c for c in todo if c["method"] != "classical"]
    accs = {}
    for c in trained:
        res = c["out"] / "result.json"
        if res.exists():
            accs[c["out"].name] = json.loads(res.read_text()).get("accuracy")
    return {"runs_dir": str(timing_path(todo).parent), "accuracies": accs}


def run_cells(table: str, todo: list[dict], only: set | None, args) -> None:
    """Train every selected cell without a result: the teacher first, then ``--jobs`` at a time.

    A failed cell is reported and the others go on; the exit status is non-zero at the end.
    A run that trains every cell of the protocol from the start (none had a result or a
    checkpoint, no ``--only``) and finishes them all records its wall time, the jobs and the
    cores in :func:`timing_path`: the figure of a whole table on this machine.
    """
    pending = [
        c
        for c in todo
        if not (c["out"] / "result.json").exists() and not c.get("given")
        and (only is None or c["out"].name in only or c["method"] == "classical")
    ]
    trained = [c for c in todo if c["method"] != "classical"]
    whole = only is None and all(
        c in pending and not (c["out"] / "ckpt.pt").exists() for c in trained)
    t_run = time.time()
    failed = []

    def start(c):
        print(f"[{table}] {c['row']} / {c['method']}: {c['shown']}", flush=True)
        c["t0"] = time.time()
        if c.get("swap_from"):
            if table == "table3":
                swap_to_max_cifar(
                    c["out"].parent / c["swap_from"], c["out"], args.data_dir, args.device
                )
            else:
                swap_to_max(c["out"].parent / c["swap_from"], c["out"], args.data_dir)
            return None
        cmd = [sys.executable, "-m", c.get("module", "model.train"), *c["argv"]]
        if args.nproc > 1:  # each cell data-parallel over nproc processes (torchrun)
            run = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
            cmd = [sys.executable, *run, *cmd[1:]]
        c["out"].mkdir(parents=True, exist_ok=True)
        log = open(c["out"] / "train.log", "a")  # noqa: SIM115 - closed when the job ends
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log

    def finish(c, rc):
        msg = "done" if rc == 0 else f"FAILED (exit {rc}, log {c['out'] / 'train.log'})"
        print(f"[{table}] {c['out'].name}: {msg} in {time.time() - c['t0']:.0f}s", flush=True)
        if rc:
            failed.append(c["out"].name)

    for c in todo:
        if drift := recipe_drift(c):
            print(f"[{table}] {c['out'].name}: trained under an older recipe ("
                  + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in drift.items())
                  + f"); move {c['out']} away to rerun it", flush=True)
    queue = list(pending)
    running: list = []
    while queue or running:
        # the teacher and the swap cells wait until everything before them has finished
        while queue and len(running) < max(1, args.jobs):
            c = queue[0]
            if (c["method"] == "classical" or c.get("swap_from")) and running:
                break
            if any(r[0]["method"] == "classical" for r in running):
                break
            queue.pop(0)
            job = start(c)
            if job is None:
                finish(c, 0)
            else:
                running.append((c, *job))
        time.sleep(0.5)
        for item in list(running):
            c, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                finish(c, proc.returncode)
    if failed:
        raise SystemExit(f"{len(failed)} cell(s) failed: {', '.join(failed)}")
    if whole and trained:
        rec = {"table": table, "cells": len(trained), "jobs": max(1, args.jobs),
               "cores": os.cpu_count(), "device": getattr(args, "device", "cpu"),
               "wall_s": round(time.time() - t_run, 1),
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_run)),
               **timing_extras(todo)}
        timing_path(todo).write_text(json.dumps(rec, indent=2) + "\n")
        print(f"[{table}] all {len(trained)} cells in {rec['wall_s']:.0f}s "
              f"({rec['jobs']} jobs, {rec['cores']} cores)", flush=True)
