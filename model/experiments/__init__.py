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

from .cells import (
    AUTHORS_KD,
    AUTHORS_KD_LAYERS,
    AUTHORS_KEEP,
    AUTHORS_REFIT,
    CLASSICAL_PAPER,
    CLASSICAL_PAPER_T3,
    LSE_MAX_ANNEAL,
    PROTOCOLS,
    SCHEDULES,
    SCHEDULES_T3,
    TABLES,
    cell_dir,
    cells,
    cells_table3,
)
from .cli import main, parse_args
from .results import loss_curves, write_readme_table, write_results
from .runner import (
    recipe_drift,
    recorded_config,
    run_cells,
    swap_to_max,
    swap_to_max_cifar,
    timing_path,
)

__all__ = [
    "TABLES",
    "CLASSICAL_PAPER",
    "CLASSICAL_PAPER_T3",
    "SCHEDULES",
    "SCHEDULES_T3",
    "cells_table3",
    "PROTOCOLS",
    "AUTHORS_KEEP",
    "AUTHORS_KD",
    "AUTHORS_KD_LAYERS",
    "AUTHORS_REFIT",
    "LSE_MAX_ANNEAL",
    "cell_dir",
    "cells",
    "swap_to_max",
    "swap_to_max_cifar",
    "run_cells",
    "recipe_drift",
    "recorded_config",
    "timing_path",
    "loss_curves",
    "write_results",
    "write_readme_table",
    "parse_args",
    "main",
]
