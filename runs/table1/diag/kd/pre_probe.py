"""Does the KD cells' conv5 die because the layer MSE is taken after the ReLU? The authors'
KD (Liahimz/BM_Network, src/KD_train.py) compares each BM layer's output before its ReLU. From
the same conversion and refit as the cell, train ``STEPS`` batches of section 4.1's loss with the
layer terms after the ReLU (ours) or before it, and print conv5's live channels and the test
accuracy on 2,000 images as they go:
    python runs/table1/diag/kd/pre_probe.py CELL post|pre|partial [STEPS]
(partial: before the ReLU, skipping where student and teacher are both at or below zero,
model.train.losses.partial_pre; added after the post and pre logs were made)"""
import copy
import json
import sys

import torch
import torch.nn.functional as F

from model.train.config import TrainConfig
from model.train.convert import convert_layer, converted, load_teacher, refit_layer
from model.train.data import load_data
from model.train.losses import centred, feature_mse, partial_pre, soft_ce

torch.set_num_threads(1)
torch.manual_seed(0)
cell, where = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
raw = json.load(open(f"runs/table1/authors/{cell}/config.json"))
cfg = TrainConfig(**{k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__})
xtr, ytr, xte, yte = load_data(cfg)
teacher = load_teacher(cfg).eval()
net = copy.deepcopy(teacher)
for i in converted(cfg, net):
    convert_layer(cfg, net, i)
with torch.no_grad():  # as refit_all
    x, h = xtr[: cfg.refit_images], xtr[: cfg.refit_images]
    for i, layer in enumerate(net.layers):
        if i in converted(cfg, net):
            refit_layer(cfg, layer, h, teacher.run_layer(i, teacher.run(x, 0, i), pre=True))
        h = net.run_layer(i, h)


def pre_features(m, xb):
    out, h = [], xb
    for i in range(len(m.layers)):
        out.append(m.run_layer(i, h, pre=True))
        h = m.run_layer(i, h)
    return out


feats = pre_features if where in ("pre", "partial") else (lambda m, xb: m.features(xb))


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
    xb, yb = xtr[j], ytr[j]
    with torch.no_grad():
        tf = feats(teacher, xb)
    sf = feats(net, xb)
    mse = sum(feature_mse(partial_pre(a, b) if where == "partial" else a, b, cfg.kd_norm)
              for a, b in zip(sf[:-1], tf[:-1], strict=True))
    mse = mse + feature_mse(centred(sf[-1]), centred(tf[-1]), cfg.kd_norm)
    loss = cfg.beta * mse + cfg.ce_weight * (soft_ce(sf[-1], tf[-1], cfg.kd_temp)
                                             + F.cross_entropy(sf[-1], yb))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (s + 1) % 25 == 0:
        print(f"{cell} {where} step {s + 1}: loss {float(loss):.3f} {probe()}", flush=True)
