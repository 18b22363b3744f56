"""Does the KD cells' conv5 die because the layer MSE is taken after the ReLU? The authors'
KD (Liahimz/BM_Network, src/KD_train.py) compares each BM layer's output before its ReLU. From
the same conversion and refit as the cell, train ``STEPS`` batches of section 4.1's loss with the
layer terms after the ReLU (ours) or before it, and print conv5's live channels and the test
accuracy on 2,000 images as they go:
    python runs/table1/diag/kd/pre_probe.py CELL post|pre|partial [STEPS]
(the cell's own loss, model.train.losses.kd_loss_fn, at --kd-layers post|pre|partial)"""
import copy
import dataclasses
import json
import sys
from types import SimpleNamespace

import torch

from model.train.config import TrainConfig
from model.train.convert import convert_layer, converted, load_teacher, refit_all
from model.train.data import load_data
from model.train.losses import kd_loss_fn

torch.set_num_threads(1)
torch.manual_seed(0)
cell, where = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
raw = json.load(open(f"runs/table1/authors/{cell}/config.json"))
cfg = TrainConfig(**{k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__})
cfg = dataclasses.replace(cfg, kd_layers=where)
xtr, ytr, xte, yte = load_data(cfg)
teacher = load_teacher(cfg).eval()
net = copy.deepcopy(teacher)
for i in converted(cfg, net):
    convert_layer(cfg, net, i)
refit_all(SimpleNamespace(cfg=cfg, log=lambda *a: None), net, teacher, (xtr,))
loss_fn = kd_loss_fn(cfg, teacher)  # the cell's loss, its layers compared `where`


@torch.no_grad()
def probe():
    xs = xte[:2000]
    acc = float((net(xs).argmax(1) == yte[:2000]).float().mean())
    c5 = net.run(xtr[:2000], 0, 5)
    live = int(((c5 > 0).float().mean((0, 2, 3)) > 0).sum())
    return f"acc {acc:.4f} conv5 live {live}/16 positive {float((c5 > 0).float().mean()):.3f}"


opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
gen = torch.Generator().manual_seed(cfg.seed)
perm = torch.randperm(len(xtr), generator=gen)
print(f"{cell} {where} step 0: {probe()}", flush=True)
for s in range(steps):
    j = perm[s * 128 % len(xtr):][:128]
    loss = loss_fn(net, xtr[j], ytr[j], None)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (s + 1) % 25 == 0:
        print(f"{cell} {where} step {s + 1}: loss {loss.item():.3f} {probe()}", flush=True)
