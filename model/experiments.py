"""Whole tables of the paper: ``python -m model.experiments table1|table2|table3 --data-dir DIR``.

Each cell is one ``python -m model.train`` run (``model.train_cifar`` for Table 3) in
``--runs-dir/<table>/<cell>``; a cell whose ``result.json`` exists is not rerun (delete it to
rerun), and an interrupted cell resumes from its checkpoint. The classical reference is trained
first and is the teacher of every other cell. Writes ``results/<table>.json`` (a list of ``{row,
method, accuracy, paper, command, ...}``) and ``results/<table>.md`` with the paper's figure beside
ours.

``--schedule reduced`` shortens every run (for a first pass on a slow machine); the schedule used
is recorded in each entry.

Table 3 (CIFAR-10, ResNet-22) has two schedules: ``gpu`` (the default; one H100 in about ten
minutes for the teacher and the nine cells, with ``--device cuda --jobs 8``; every run has a
wall-clock budget so the whole table ends on time) and ``cpu`` (a reduced run on this kind of
machine: ``--subset`` training images, ``--test-subset`` test images, ``--epochs`` per student
run). The results say which data (``CIFAR-10 (JPEG q75)`` for the project's lossy copy) and
schedule each figure comes from.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["TABLES", "SCHEDULES", "cells", "parse_args", "main"]

# paper figures, METHOD.md section 4
TABLES = {
    "table1": {
        "title": "Table 1 - MNIST, 5-layer 4-branch BM network, test accuracy",
        "columns": ["direct", "layerwise", "layerwise_freeze", "kd"],
        "rows": {
            "4-BM (hard max)": ("max", [0.1064, 0.9648, 0.9713, 0.9893]),
            "4-BM S-morph": ("smorph", [0.9231, 0.9666, 0.9737, 0.9871]),
            "4-BM L-morph": ("lmorph", [0.1246, 0.9361, 0.9582, 0.9612]),
            "4-BM LSE": ("lse", [0.9863, 0.9871, 0.9922, 0.9945]),
        },
    },
    "table2": {
        "title": "Table 2 - MNIST, 5-layer 1.5-branch BM network, test accuracy",
        "columns": ["direct", "kd", "lwkd"],
        "rows": {
            "1.5-BM LSE": ("lse", [0.1486, 0.9998, 0.9998]),
            "1.5-BM LSE-MAX": ("lse-max", [0.1153, 0.9821, 0.9986]),
            "1.5-BM MAX": ("max", [0.0926, 0.9786, 0.9989]),
        },
    },
    "table3": {
        "title": "Table 3 - CIFAR-10, ResNet-22 with 1.5-branch BM layers, test accuracy",
        "columns": ["direct", "kd", "lwkd"],
        "rows": {
            "1.5-BM LSE": ("lse", [0.0982, 0.8700, 0.8700]),
            "1.5-BM LSE-MAX": ("lse-max", [0.1033, 0.8527, 0.8661]),
            "1.5-BM MAX": ("max", [0.1084, 0.8514, 0.8669]),
        },
    },
}
CLASSICAL_PAPER = 0.9901
CLASSICAL_PAPER_T3 = 0.8643

SCHEDULES = {
    # epochs for classical/direct/kd, per conversion step (layerwise), per layer (lwkd)
    # final: joint KD fine-tune of the whole student after layer-wise KD with the hard max
    "paper": {
        "classical": 8,
        "epochs": 5,
        "layer_epochs": "3,3,4,4,4,8",
        "layerwise": 2,
        "final": 10,
    },
    "reduced": {
        "classical": 4,
        "epochs": 2,
        "layer_epochs": "1,1,2,2,2,4",
        "layerwise": 1,
        "final": 1,
    },
}


# Table 3: epochs of the teacher, of direct / kd / the hard-max stage of two_stage, per layer of
# lwkd (23 layers), of lwkd's final joint fine-tune; the wall-clock budget of each run (seconds)
SCHEDULES_T3 = {
    "gpu": {
        "classical": 30,
        "epochs": 4,
        "layer_epochs": 0.2,
        "final": 1,
        "batch": 256,
        "budget_teacher": 150,
        "budget": 420,
        "args": ["--amp"],
    },
    "cpu": {
        "classical": 8,
        "epochs": 1,
        "layer_epochs": 0.1,
        "final": 0.5,
        "batch": 128,
        "budget_teacher": 0,
        "budget": 0,
        "args": [],
    },
}


def cells_table3(schedule: str, runs: Path, common: list[str], epochs: float | None) -> list[dict]:
    """Table 3's teacher and nine cells (``model.train_cifar`` argument lists)."""
    sch = dict(SCHEDULES_T3[schedule])
    if epochs is not None:  # --epochs: the students' epochs, the rest in proportion
        scale = epochs / sch["epochs"]
        for k in ("classical", "epochs", "layer_epochs", "final"):
            sch[k] = sch[k] * scale
    base = runs / "table3"
    teacher = base / "classical" / "model.pt"

    def budget(key):
        return ["--budget-s", str(sch[key])] if sch[key] else []

    tail = ["--batch-size", str(sch["batch"]), *sch["args"]]
    out = [
        {
            "row": "classical reference",
            "method": "classical",
            "paper": CLASSICAL_PAPER_T3,
            "out": base / "classical",
            "argv": ["--method", "classical", "--epochs", f"{sch['classical']:g}"]
            + budget("budget_teacher"),
        }
    ]
    spec = TABLES["table3"]
    for row, (op, papers) in spec["rows"].items():
        for col, paper in zip(spec["columns"], papers, strict=True):
            cell = {"row": row, "method": col, "paper": paper, "out": base / f"{op}_{col}"}
            argv = ["--form", "bm15"]
            if col != "direct":
                argv += ["--teacher", str(teacher)]
            lse = ["--alpha", "1", "--alpha-end", "32"]
            if op == "lse-max" and col == "direct":
                cell["swap_from"] = "lse_direct"
            elif op == "lse-max":
                argv += ["--method", "two_stage", "--first-method", col, *lse]
            else:
                argv += ["--method", col, "--op", op] + (lse if op == "lse" else [])
            if col == "lwkd":
                argv += ["--layer-epochs", f"{sch['layer_epochs']:g}"]
                argv += ["--final-epochs", f"{sch['final']:g}"] if op != "lse-max" else []
            if not (col == "lwkd" and op != "lse-max"):
                argv += ["--epochs", f"{sch['epochs']:g}"]
            cell["argv"] = argv + budget("budget")
            out.append(cell)
    for c in out:
        c["argv"] = ["--out", str(c["out"]), *c["argv"], *tail, *common]
        c["module"] = "model.train_cifar"
    return [c for c in out if "swap_from" not in c] + [c for c in out if "swap_from" in c]


PROTOCOLS = ("authors", "allbm")
# the authors' protocol (METHOD.md section 7, issue 23): the classifier (layer 5 of the LeNet)
# stays classical; alpha is learned per layer from 1 and frozen after its stage; the KD losses
# are normalised per layer, with the soft term at a temperature
AUTHORS_KEEP = "5"
AUTHORS_KD = ["--kd-norm", "--kd-temp", "4"]


def cell_dir(runs: Path, table: str, protocol: str, name: str) -> Path:
    """A cell's run folder: ``runs/<table>/<name>`` (``allbm``, the first protocol measured) or
    ``runs/<table>/authors/<name>``. The classical teacher is shared."""
    base = runs / table
    if name == "classical" or protocol == "allbm":
        return base / name
    return base / protocol / name


def _authors_argv(op: str, col: str, sch: dict) -> list[str]:
    """The authors' protocol for one cell (after ``--form`` and ``--teacher``)."""
    argv = ["--keep", AUTHORS_KEEP]
    learn = ["--alpha", "1", "--learn-alpha"]  # no annealing: evaluated at the learned alpha
    kd = AUTHORS_KD if col in ("kd", "lwkd") else []
    if op == "lse-max":
        return argv + ["--method", "two_stage", "--first-method", col, *learn,
                       "--epochs", str(sch["epochs"]), "--layer-epochs", sch["layer_epochs"], *kd]
    argv += ["--method", col, "--op", op, *kd] + (learn if op != "max" else [])
    if col == "lwkd":
        argv += ["--layer-epochs", sch["layer_epochs"]]
        if op == "max":  # then the whole student end to end, as in the all-BM protocol
            argv += ["--final-epochs", str(sch["final"]), "--final-lr", "5e-4"]
    elif col in ("layerwise", "layerwise_freeze"):
        argv += ["--epochs", str(sch["layerwise"])]
    else:
        argv += ["--epochs", str(sch["epochs"])]
    return argv


def cells(table: str, schedule: str, runs: Path, common: list[str],
          protocol: str = "allbm", teacher: Path | None = None) -> list[dict]:
    """Every cell of ``table`` under ``protocol`` as ``{row, method, paper, out, argv,
    protocol}``, the classical one first (``teacher``: an existing classical model instead)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    sch = SCHEDULES[schedule]
    base = runs / table
    cls = {
        "row": "classical reference",
        "method": "classical",
        "paper": CLASSICAL_PAPER,
        "out": base / "classical",
        "argv": ["--method", "classical", "--epochs", str(sch["classical"])],
    }
    if teacher is not None:
        cls.update(given=Path(teacher), out=Path(teacher).parent)
    teacher = cls["out"] / "model.pt"
    out = [cls]
    spec = TABLES[table]
    form = "bm4" if table == "table1" else "bm15"
    for row, (op, papers) in spec["rows"].items():
        for col, paper in zip(spec["columns"], papers, strict=True):
            name = f"{op}_{col}"
            cell = {"row": row, "method": col, "paper": paper,
                    "out": cell_dir(runs, table, protocol, name)}
            argv = ["--form", form, "--teacher", str(teacher)]
            if protocol == "authors":
                if op == "lse-max" and col == "direct":
                    cell["swap_from"] = "lse_direct"
                else:
                    argv += _authors_argv(op, col, sch)
                cell["argv"] = argv
                out.append(cell)
                continue
            if op == "lse-max" and col == "direct":
                cell["swap_from"] = "lse_direct"
            elif op == "lse-max":
                argv += [
                    "--method",
                    "two_stage",
                    "--first-method",
                    col,
                    "--alpha-end",
                    "64",
                    "--epochs",
                    str(sch["epochs"]),
                    "--layer-epochs",
                    sch["layer_epochs"],
                ]
            else:
                argv += ["--method", col, "--op", op]
                if op != "max":
                    argv += ["--alpha", "1", "--alpha-end", "32"]
                if col == "lwkd":
                    argv += ["--layer-epochs", sch["layer_epochs"]]
                if col == "lwkd" and op == "max":
                    # the classifier: LSE annealed to 64, then the hard max, trained with the
                    # last conv; then the whole student end to end (train.py, METHOD.md sec. 6)
                    argv += [
                        "--last-op",
                        "lse",
                        "--last-joint",
                        "1",
                        "--final-epochs",
                        str(sch["final"]),
                        "--final-lr",
                        "5e-4",
                    ]
                elif col in ("layerwise", "layerwise_freeze"):
                    argv += ["--epochs", str(sch["layerwise"])]
                else:
                    argv += ["--epochs", str(sch["epochs"])]
            cell["argv"] = argv
            out.append(cell)
    for c in out:
        c["argv"] = ["--out", str(c["out"]), *c["argv"], *common]
        c["protocol"] = "classical" if c["method"] == "classical" else protocol
    # a swap cell needs its source: put it after every training cell
    return [c for c in out if "swap_from" not in c] + [c for c in out if "swap_from" in c]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.experiments", description=__doc__)
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
    return p.parse_args(argv)


def swap_to_max(src: Path, dst: Path, data_dir: str | None) -> dict:
    """Evaluate ``src/model.pt`` with every BM layer's op replaced by the hard max."""
    import torch

    from .maxops import MaxOp
    from .train import TrainConfig, evaluate, load_data, load_model, net_to_dict

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

    from .maxops import MaxOp
    from .train import net_to_dict
    from .train_cifar import CifarConfig, evaluate, load_cifar_tensors, load_resnet

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
    if not args.collect:
        run_cells(table, todo, only, args)
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
        for k in ("accuracy_lse", "accuracy_lse_max", "per_layer_accuracy", "alphas"):
            if k in res:
                entry[k] = res[k]
        entries.append(entry)
    write_results(table, entries, Path(args.results_dir))
    return entries


_EPOCH_LINE = re.compile(r"\] (.+?) epoch (\d+)/(\d+): loss (\S+)")


def loss_curves(log: str) -> dict[str, list[float]]:
    """Each training stage's mean loss per epoch, from a ``model.train`` log (``{stage: [epoch
    1, epoch 2, ...]}``; an epoch logged twice, by a resumed run, counts once, the last)."""
    by: dict[str, dict[int, float]] = {}
    for tag, ep, _n, loss in _EPOCH_LINE.findall(log):
        try:
            by.setdefault(tag, {})[int(ep)] = float(loss)
        except ValueError:
            continue
    return {tag: [eps[e] for e in sorted(eps)] for tag, eps in by.items()}


def run_cells(table: str, todo: list[dict], only: set | None, args) -> None:
    """Train every selected cell without a result: the teacher first, then ``--jobs`` at a time.

    A failed cell is reported and the others go on; the exit status is non-zero at the end.
    """
    pending = [
        c
        for c in todo
        if not (c["out"] / "result.json").exists() and not c.get("given")
        and (only is None or c["out"].name in only or c["method"] == "classical")
    ]
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


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def write_results(table: str, entries: list[dict], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{table}.json").write_text(json.dumps(entries, indent=2) + "\n")
    spec = TABLES[table]
    cols = spec["columns"]
    if table == "table3":
        scored = sorted(
            {
                (e.get("data"), e.get("train_images"), e.get("test_images"))
                for e in entries
                if e.get("accuracy") is not None
            },
            key=str,
        )
        where = "; ".join(f"{d}, {tr} training / {te} test images" for d, tr, te in scored)
        what = f"Ours ({where or 'nothing run yet'}) / paper."
    else:
        what = "Ours (full MNIST test set) / paper."
    lines = [
        f"# {spec['title']}",
        "",
        f"{what} In brackets: the training wall time of the cell and where it ran (its last "
        "part, for a cell resumed before runs summed their parts). Commands in the JSON beside "
        "this file.",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]

    def ours(e):
        """Our figure with its wall time and device, or why there is none."""
        if e is None:
            return "-"
        a = e["accuracy"]
        if a is None:
            return e.get("status", "not run")
        took = ""
        if e.get("wall_s"):
            part = "last part " if e.get("last_segment_only") else ""
            split = e.get("wall_s_by_device")
            where = (
                ", ".join(f"{d} {_duration(t)}" for d, t in split.items())
                if split
                else e.get("device") or "cpu"
            )
            took = f" ({part}{_duration(e['wall_s'])}{': ' if split else ', '}{where})"
        return f"{a:.4f}{took}"

    def fmt(e):
        return "-" if e is None else f"{ours(e)} / {e['paper']:.4f}"

    protocols = table != "table3"
    if protocols:  # each cell: authors / allbm / paper
        lines[2] = (
            "Each cell: **authors' protocol** (convolutions BM, classifier classical, alpha "
            "learned from 1 and frozen, KD normalised per layer) / **all-BM protocol** (every "
            "layer BM) / paper, on the full MNIST test set. In brackets: the training wall time "
            "and where it ran. Commands, frozen alphas, per-stage accuracies and loss curves in "
            "the JSON beside this file."
        )

    by = {(e["row"], e["method"], e.get("protocol") if protocols else None): e for e in entries}
    cls = by.get(("classical reference", "classical", "classical" if protocols else None))
    lines.append(
        "| classical reference | " + " | ".join([fmt(cls)] + ["-"] * (len(cols) - 1)) + " |"
    )
    for row, (_op, papers) in spec["rows"].items():
        if protocols:
            cells_ = [f"{ours(by.get((row, c, 'authors')))} / {ours(by.get((row, c, 'allbm')))}"
                      f" / {paper:.4f}" for c, paper in zip(cols, papers, strict=True)]
        else:
            cells_ = [fmt(by.get((row, c, None))) for c in cols]
        lines.append(f"| {row} | " + " | ".join(cells_) + " |")
    total = sum(e.get("wall_s") or 0 for e in entries)
    devices = sorted(
        {d for e in entries if e.get("device") for d in e.get("wall_s_by_device") or [e["device"]]}
    )
    lines += [
        "",
        f"Schedule: {entries[0]['schedule'] if entries else '-'}; total training wall time "
        f"{total / 3600:.1f} h (sum over cells; device: {', '.join(devices) or '-'}).",
    ]
    (results / f"{table}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
