"""Issue 23: conv5's conversion in the authors' MAX / layer-wise KD cell, refit two ways.

The cell (runs/table2/authors/max_lwkd) flattened conv5 at conversion (gain median 0.001) and
never left 0.1135. From its after_layer3.pt (conv1-4 BM, conv5 the tutor's), conv5 is converted
to the 1.5-BM hard max and refit on 2,000 training images against the tutor's conv5
pre-activations, with the gain floor and with the spread rule; the student path is scored on the
full test set.   python runs/table2/diag/refit_probe.py
"""
import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.train import TrainConfig, evaluate, load_data  # noqa: E402
from model.train.convert import convert_layer, refit_to  # noqa: E402
from model.train.run import load_model  # noqa: E402

torch.set_num_threads(1)
cfg = TrainConfig(form="bm15", op="max", dx=0.0, data_dir="../shared/data/mnist")
xtr, ytr, xte, yte = load_data(cfg)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from c5_seed import SRC, stage4_nets  # noqa: E402

net = load_model(str(SRC / "after_layer3.pt"), "cpu")
# the tutor as lwkd held it when conv5's stage began; the refit's targets are its own
# pre-activations
_, tutor = stage4_nets(SRC)
print("before conversion (conv5 the tutor's):", evaluate(net, xte, yte), flush=True)
for rule in ("floor", "spread"):
    c = replace(cfg, refit_gain=rule)
    s = copy.deepcopy(net)
    convert_layer(c, s, 4)
    refit_to(c, s, 4, tutor, xtr[: c.refit_images], print)
    g = s.layers[4].w_pos().flatten(1).amax(1)
    print(f"{rule}: student path {evaluate(s, xte, yte):.4f}; max positive weight per channel, "
          f"median {float(g.detach().median()):.4g}", flush=True)
