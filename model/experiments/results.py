"""Collecting the cells: ``results/<table>.json`` and ``.md``, loss curves from the logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .cells import TABLES

__all__ = ["loss_curves", "write_readme_table", "write_results"]


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


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def write_results(table: str, entries: list[dict], results: Path,
                  timings: dict | None = None) -> None:
    """``results/<table>.json`` and ``.md``. ``timings``: ``{protocol: record}`` of the runs
    that trained a whole protocol's cells at once (``model.experiments.runner.timing_path``);
    the table states each one's wall time, or that there is none yet."""
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
        return f"{a:.4f}{took}{' (stale)' if e.get('stale') else ''}"

    def fmt(e):
        return "-" if e is None else f"{ours(e)} / {e['paper']:.4f}"

    protocols = table != "table3"
    if protocols:  # each cell: authors / allbm / paper
        lines[2] = (
            "Each cell: **authors' protocol** (convolutions BM, classifier classical, alpha "
            "learned from 1 and frozen, LSE-MAX's stage 1 annealed to 64 and the switch keeping "
            "the weights, KD normalised per layer, a layer-wise conversion refitted to the "
            "layer it replaces, 4-BM direct training from the classical init's spread, the "
            "lwkd cells ending on the logits alike) / **all-BM protocol** (every "
            "layer BM) / paper, on the full MNIST test set. In brackets: the training wall time "
            "and where it ran. The classical reference is the authors' cells' teacher. "
            "Commands, frozen alphas, per-stage accuracies and loss curves in "
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
    if protocols:
        lines += _diagnostics(entries, cls)
    lines += _stale(entries)
    total = sum(e.get("wall_s") or 0 for e in entries)
    devices = sorted(
        {d for e in entries if e.get("device") for d in e.get("wall_s_by_device") or [e["device"]]}
    )
    lines += [
        "",
        f"Schedule: {entries[0]['schedule'] if entries else '-'}; total training wall time "
        f"{total / 3600:.1f} h (sum over cells; device: {', '.join(devices) or '-'}).",
    ]
    for prot in ("authors", "allbm") if protocols else ("cells",):
        rec = (timings or {}).get(prot)
        label = {"authors": "authors'", "allbm": "all-BM"}.get(prot, prot)
        name = f"the {label} protocol's" if protocols else "all the"
        if rec:
            lines.append(
                f"One run of {name} {rec['cells']} cells: **{_duration(rec['wall_s'])}** "
                f"({rec['wall_s']:,.0f} s; {rec['jobs']} jobs on {rec['cores']} cores, "
                f"{rec['device']}, started "
                f"{rec['started']}).")
            if rec.get("accuracies"):
                accs = ", ".join(f"{k} {v:.4f}" for k, v in rec["accuracies"].items() if v)
                lines.append(f"That run's cells (`{rec['runs_dir']}`): {accs}.")
        elif prot == "authors" or not protocols:
            lines.append(f"{name[0].upper()}{name[1:]} cells have not been trained in one run "
                         "yet (a run from empty run folders records its wall time).")
    (results / f"{table}.md").write_text("\n".join(lines) + "\n")


def _stale(entries: list[dict]) -> list[str]:
    """The cells marked "(stale)": trained under an older recipe than their command's now."""
    stale = [e for e in entries if e.get("stale")]
    if not stale:
        return []
    lines = ["", "## Stale cells", "",
             "Trained under an older recipe than the command in the JSON: their figures are "
             "not the recipe's. Move a cell's run folder away and run the table to retrain it.",
             ""]
    for e in stale:
        what = ", ".join(f"`{k}` {a!r}, now {b!r}" for k, (a, b) in e["stale"].items())
        prot = f" ({e['protocol']})" if e.get("protocol") else ""
        lines.append(f"- {e['row']} / {e['method']}{prot}: trained with {what}.")
    return lines


CHANCE = 0.5  # a paper figure below this is at chance (direct training of a hard max, ...)
GOAL, WITHIN = 0.90, 0.01  # issue 23: no authors cell below GOAL; within WITHIN of the paper


def _diagnostics(entries: list[dict], teacher: dict | None) -> list[str]:
    """A "Diagnostics" section: for each authors' cell below :data:`GOAL` or more than
    :data:`WITHIN` from the paper either way (the paper's figure not at chance), what its run
    measured: the student path's accuracy after each stage, each stage's loss from its first
    epoch to its last, the frozen alphas, and for a two-stage cell the accuracy before and after
    the switch."""
    t_acc = (teacher or {}).get("accuracy")
    out = []
    for e in entries:
        a, paper = e.get("accuracy"), e["paper"]
        if e.get("protocol") != "authors" or a is None or paper < CHANCE:
            continue
        if a >= GOAL and abs(paper - a) <= WITHIN:
            continue
        facts = []
        if a > paper:
            facts.append(f"{(a - paper) * 100:.1f} pp above the paper")
        if t_acc is not None and paper > t_acc and a >= GOAL:
            facts.append(f"the paper's figure is above our teacher's {t_acc:.4f}")
        if e.get("per_layer_accuracy"):
            per = e["per_layer_accuracy"]
            facts.append("after each stage " + ", ".join(f"{x:.4f}" for x in per))
        if e.get("accuracy_lse") is not None:
            facts.append(f"LSE stage {e['accuracy_lse']:.4f}, switched to the hard max "
                         f"{e.get('accuracy_lse_max', float('nan')):.4f}")
        curves = e.get("loss_curves") or {}
        if curves:
            facts.append("loss " + "; ".join(
                f"{k} {v[0]:.4g} -> {v[-1]:.4g}" for k, v in curves.items() if v))
        alphas = [x for x in e.get("alphas") or [] if x is not None]
        if alphas:
            facts.append("frozen alphas " + ", ".join(f"{x:.3g}" for x in alphas))
        out.append(f"- **{e['row']} / {e['method']}: {a:.4f}** (paper {paper:.4f}): "
                   + "; ".join(facts) + ".")
    if not out:
        return []
    return ["", "## Diagnostics", "",
            f"Authors' cells below {GOAL:.2f} or more than {WITHIN * 100:.0f} pp from the paper, "
            "below or above it (paper figures at chance excepted), from their runs' logs; the "
            "explanation of each is in docs/tables.md.", "", *out]


def _markers(table: str) -> tuple[str, str]:
    return f"<!-- results/{table}.md begin -->", f"<!-- results/{table}.md end -->"


def write_readme_table(table: str, results: Path, readme: Path) -> bool:
    """Replace the block between ``readme``'s markers for ``table`` (:func:`_markers`) with
    ``results/<table>.md`` less its title and diagnostics (the README links to them). Returns
    whether there was a block; a file without the markers is left as it is."""
    begin, end = _markers(table)
    text = readme.read_text()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return False
    md = (results / f"{table}.md").read_text().splitlines()
    body, skip = [], False
    for line in md[1:]:  # the README gives its own heading
        if line.startswith("## "):  # the diagnostics: in results/<table>.md only
            skip = True
        elif line.startswith("Schedule:"):  # the footer, after them
            skip = False
        if not skip:  # the README is not beside the JSON
            body.append(line.replace("the JSON beside this file", f"results/{table}.json"))
    while body and not body[0].strip():
        body.pop(0)
    block = "\n".join([begin, *body, f"(Diagnostics: [results/{table}.md](results/{table}.md).)",
                        end])
    new = text[:i] + block + text[j + len(end):]
    if new != text:
        tmp = readme.with_suffix(readme.suffix + ".tmp")
        tmp.write_text(new)
        tmp.replace(readme)
    return True
