"""The paper's tables, their schedules and the two protocols: every cell as a training command."""

from __future__ import annotations

from pathlib import Path

__all__ = ["TABLES", "CLASSICAL_PAPER", "CLASSICAL_PAPER_T3", "SCHEDULES", "SCHEDULES_T3",
           "cells_table3", "PROTOCOLS", "AUTHORS_KEEP", "AUTHORS_KD", "AUTHORS_REFIT",
           "LSE_MAX_ANNEAL", "FINAL_LR", "cell_dir", "cells"]


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
                argv += ["--method", "two_stage", "--first-method", col, *lse,
                         "--switch-refit", "teacher"]  # as Table 3 was run
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


# section 4.1's KD in the 4-BM cells compares each layer before its ReLU, as the authors'
# KD_train.py does: after the ReLU, a channel that the all-at-once conversion leaves below zero
# gets no gradient, and conv5 was left with 1 live channel of 16. The 1.5-BM cells compare
# after it: before it, their loss grew as alpha rose and they trailed from the first epoch
# (issue 23, docs/tables.md)
AUTHORS_KD_LAYERS = ["--kd-layers", "pre"]


# the refit at a conversion: a layer where most channels have no positive least-squares gain is
# kept at the target's spread instead of flattened (issue 23: the floor rule collapsed MAX /
# layer-wise KD at conv5 and flattened conv2 and conv5 at the all-at-once conversions)
AUTHORS_REFIT = ["--refit-gain", "auto"]


# the authors' LSE-MAX cells: stage 1 anneals alpha from 1 to 64, the switch keeps the weights
LSE_MAX_ANNEAL = ["--alpha", "1", "--alpha-end", "64", "--switch-refit", "none"]


# the authors' layer-wise KD cells' last joint fine-tune of the whole hard-max student (MAX's
# --final-epochs, LSE-MAX's stage 2): one learning rate, so that they differ only in the stages
FINAL_LR = "5e-4"


def cell_dir(runs: Path, table: str, protocol: str, name: str) -> Path:
    """A cell's run folder: ``runs/<table>/<name>`` (``allbm``, the first protocol measured) or
    ``runs/<table>/authors/<name>``. The classical teacher is shared."""
    base = runs / table
    if name == "classical" or protocol == "allbm":
        return base / name
    return base / protocol / name


def _authors_argv(op: str, col: str, sch: dict, form: str) -> list[str]:
    """The authors' protocol for one cell (after ``--form`` and ``--teacher``)."""
    argv = ["--keep", AUTHORS_KEEP, *AUTHORS_REFIT]
    learn = ["--alpha", "1", "--learn-alpha"]  # no annealing: evaluated at the learned alpha
    kd = AUTHORS_KD if col in ("kd", "lwkd") else []
    if col == "kd" and form == "bm4":
        kd = kd + AUTHORS_KD_LAYERS
    if op == "lse-max":
        # stage 1's alpha annealed to 64, not learned: a learned alpha falls to its floor 1,
        # where LSE is the sum (the classical neuron), and the switch to the hard max then
        # changes the network; at 64 the switch keeps the accuracy, and it keeps the weights
        # (no refit to the teacher, which undoes stage 1: issue 23)
        argv += ["--method", "two_stage", "--first-method", col, *LSE_MAX_ANNEAL,
                 "--layer-epochs", sch["layer_epochs"], *kd]
        if col == "lwkd":
            # the hard-max stage as MAX / layer-wise KD's final epochs: the whole student on
            # the labels and the teacher's logits, so that the two cells differ only in the
            # LSE stages (with every layer's MSE it sat at 0.86-0.87: issue 23, docs/tables.md)
            return argv + ["--epochs", str(sch["final"]), "--final-lr", FINAL_LR,
                           "--stage2-loss", "logits"]
        return argv + ["--epochs", str(sch["epochs"])]
    argv += ["--method", col, "--op", op, *kd] + (learn if op != "max" else [])
    if col == "direct" and form == "bm4":
        # 4-BM from scratch: each layer at the classical init's spread (a plain S-morph or
        # L-morph stack passes ~1/n of the gradient per layer and stays at chance)
        argv += ["--direct-init", "spread"]
    if col == "lwkd":
        argv += ["--layer-epochs", sch["layer_epochs"]]
        if op == "max":  # then the whole student end to end, as in the all-BM protocol
            argv += ["--final-epochs", str(sch["final"]), "--final-lr", FINAL_LR]
    elif col in ("layerwise", "layerwise_freeze"):
        # Algorithm 1 has no teacher: a converted layer is refitted to the layer it replaces
        argv += ["--epochs", str(sch["layerwise"]), "--refit-target", "self"]
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
                    argv += _authors_argv(op, col, sch, form)
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
                    "--switch-refit",  # as these cells were run
                    "teacher",
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
                    # last conv; then the whole student end to end (model.train, METHOD.md sec. 6)
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
