"""Issue 23 probe: converting conv5 to LSE at alpha 1 in LSE-MAX / layer-wise KD, with and
without the refit to the tutor's targets.

    python runs/table2/diag/alpha1_refit_probe.py [SNAPSHOT] [--data-dir D]

SNAPSHOT: the ``after_layer3.pt`` of the run that collapsed at conv5
(``runs/table2/diag/lse-max_lwkd_refit``): the student's conv1-4 after their stages and the
tutor's tail. The tutor, for the refit's targets, is the teacher with that tail (its layers
0-3 are the teacher's, as in ``model.train.lwkd``).
"""

import argparse
import copy
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch  # noqa: E402

from model.train import TrainConfig  # noqa: E402
from model.train.convert import convert_layer, load_teacher, refit_to  # noqa: E402
from model.train.data import evaluate, load_data  # noqa: E402
from model.train.run import load_model  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("snapshot", nargs="?",
                   default="runs/table2/diag/lse-max_lwkd_refit/after_layer3.pt")
    p.add_argument("--teacher", default="runs/recipe_long/teacher/model.pt")
    p.add_argument("--data-dir", default="../shared/data/mnist")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig(method="lwkd", form="bm15", op="lse", alpha=1.0, teacher=a.teacher,
                      data_dir=a.data_dir, keep=(5,), refit_gain="auto")
    data = load_data(cfg)
    snap = load_model(a.snapshot).eval()
    teacher = load_teacher(cfg)
    tutor = copy.deepcopy(teacher)
    for i in (4, 5):
        tutor.layers[i] = copy.deepcopy(snap.layers[i])
    print(f"student path after conv4's stage: {evaluate(snap, data[2], data[3]):.4f}", flush=True)
    for refit in (False, True):
        net = copy.deepcopy(snap)
        with torch.no_grad():
            convert_layer(cfg, net, 4, src=tutor.layers[4])
            if refit:
                refit_to(cfg, net, 4, tutor, data[0][: cfg.refit_images], print)
        net.eval()
        print(f"conv5 to LSE at alpha 1, {'refitted to the tutor' if refit else 'no refit'}: "
              f"{evaluate(net, data[2], data[3]):.4f}", flush=True)


if __name__ == "__main__":
    main()
