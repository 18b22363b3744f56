"""The command line: ``python -m model.experiments``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .cells import PROTOCOLS, SCHEDULES, SCHEDULES_T3, TABLES, cells, cells_table3
from .results import loss_curves, write_readme_table, write_results
from .runner import recipe_drift, run_cells, timing_path

__all__ = ["parse_args", "main"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.experiments",
                                description=sys.modules[__package__].__doc__)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results-dir", default="results")
    p.add_argument(
        "--schedule",
        choices=sorted({*SCHEDULES, *SCHEDULES_T3}),
        default=None,
        help="tables 1-2: paper|reduced (default paper); table 3: gpu|cpu (default: gpu with "
        "--device cuda, else cpu)",
    )
    p.add_argument("--subset", type=int, default=0, help="table 3: training images (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="table 3: test images (0: all)")
    p.add_argument("--epochs", type=float, default=None, help="table 3: epochs per student run")
    p.add_argument("--stem", type=int, default=16, help="table 3: ResNet width (tests only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device of every run (e.g. cuda)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once (after the teacher)")
    p.add_argument(
        "--nproc", type=int, default=1, help="table 3: processes per cell (torchrun, DDP)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=0, help="images per run (smoke tests)")
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--only", default=None, help="comma list of cell names (run folder names)")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="authors",
        help="tables 1-2: which protocol to train (authors: convolutions converted, classifier "
        "classical, alpha learned from 1 and frozen, KD normalised; allbm: every layer BM). "
        "--collect and the tables show both",
    )
    p.add_argument("--teacher", default=None,
                   help="tables 1-2: an existing classical model.pt as every cell's teacher "
                   "(instead of training runs/<table>/classical)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--collect", action="store_true", help="only collect finished results")
    p.add_argument("--readme", default=None,
                   help="tables 1-2: the file whose table block (between the markers "
                   "<!-- results/tableN.md begin --> and <!-- results/tableN.md end -->) the "
                   "collected table replaces; untouched without the markers (default: the "
                   "README.md beside --results-dir)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    table = args.table
    t3 = table == "table3"
    if args.schedule is None:
        args.schedule = ("gpu" if args.device.startswith("cuda") else "cpu") if t3 else "paper"
    known = SCHEDULES_T3 if t3 else SCHEDULES
    if args.schedule not in known:
        raise SystemExit(f"{table}: --schedule must be one of {sorted(known)}")
    common = ["--threads", str(args.threads), "--seed", str(args.seed), "--no-progress"]
    if args.device != "cpu":
        common += ["--device", args.device]
    if t3 and (args.subset or args.test_subset):
        common += ["--subset", str(args.subset), "--test-subset", str(args.test_subset)]
    if t3 and args.stem != 16:
        common += ["--stem", str(args.stem)]
    elif args.train_limit or args.test_limit:
        common += ["--train-limit", str(args.train_limit), "--test-limit", str(args.test_limit)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if t3:
        todo = cells_table3(args.schedule, Path(args.runs_dir), common, args.epochs)
        shown = todo
    else:
        todo = cells(table, args.schedule, Path(args.runs_dir), common, args.protocol,
                     args.teacher)
        # the tables show both protocols, whichever was trained now
        other = [p for p in PROTOCOLS if p != args.protocol][0]
        shown = todo + [c for c in cells(table, args.schedule, Path(args.runs_dir), common, other,
                                         args.teacher) if c["method"] != "classical"]
    only = set(args.only.split(",")) if args.only else None
    for c in shown:
        mod = c.get("module", "model.train")
        c["shown"] = f"python -m {mod} " + " ".join(shlex.quote(a) for a in c["argv"])
        if c.get("swap_from"):
            c["shown"] = f"swap LSE -> max in {c['out'].parent / c['swap_from']} (no fine-tuning)"
        if c.get("given"):
            c["shown"] = f"the given teacher {c['given']}"
    if args.dry_run:
        for c in todo:
            print(c["shown"])
        return []
    if args.teacher and not Path(args.teacher).is_file():
        raise SystemExit(f"model.experiments: --teacher {args.teacher}: no such file")
    if args.readme and not Path(args.readme).is_file():
        raise SystemExit(f"model.experiments: --readme {args.readme}: no such file")
    if not args.collect:
        run_cells(table, todo, only, args)
    timings = {}
    for group in ([todo] if t3 else [todo, [c for c in shown if c not in todo]]):
        trained = [c for c in group if c["method"] != "classical"]
        if trained and timing_path(trained).exists():
            timings[trained[0].get("protocol") or "cells"] = json.loads(
                timing_path(trained).read_text())
    entries = []
    for c in shown:
        out: Path = c["out"]
        shown = c["shown"]
        res_path = out / "result.json"
        res = json.loads(res_path.read_text()) if res_path.exists() else {}
        cfg_path = out / "config.json"
        run_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        entry = {
            "row": c["row"],
            "method": c["method"],
            "protocol": c.get("protocol"),
            "accuracy": res.get("accuracy"),
            "paper": c["paper"],
            "command": shown,
            "schedule": args.schedule,
            "wall_s": res.get("wall_s"),
            "device": run_cfg.get("device", "cpu") if res else None,
        }
        seg_time: dict[str, float] = {}
        for seg in res.get("segments") or []:
            seg_time[seg["device"]] = seg_time.get(seg["device"], 0.0) + seg["wall_s"]
        if len(seg_time) > 1:  # resumed on another device: say where each part ran
            entry["device"] = " + ".join(seg_time)
            entry["wall_s_by_device"] = {d: round(t, 1) for d, t in seg_time.items()}
        if drift := recipe_drift(c):
            entry["stale"] = drift
        if not res and (out / "ckpt.pt").exists():  # started: rerunning the command resumes it
            entry["status"] = "unfinished (checkpoint)"
        log = out / "train.log"
        starts = log.read_text().count('{"method": ') if log.exists() else 0
        if res and "segments" not in res and starts > 1:
            # a result from before the runs summed their segments: wall_s is the last one's
            entry["last_segment_only"] = True
        if t3:
            entry.update(
                data=res.get("data"),
                train_images=res.get("train_images"),
                test_images=res.get("test_images"),
                budget_hit=res.get("budget_hit"),
            )
        curves = loss_curves(log.read_text()) if log.exists() else {}
        if curves:
            entry["loss_curves"] = curves
            entry["converged"] = all(c[-1] < c[0] for c in curves.values() if len(c) > 1)
        for k in ("accuracy_lse", "accuracy_lse_max", "per_layer_accuracy", "alphas",
                  "alphas_lse"):
            if k in res:
                entry[k] = res[k]
        entries.append(entry)
    write_results(table, entries, Path(args.results_dir), timings)
    if not t3:
        readme = Path(args.readme or Path(args.results_dir).resolve().parent / "README.md")
        if readme.exists() and write_readme_table(table, Path(args.results_dir), readme):
            print(f"{readme}: {table} regenerated")
    return entries
