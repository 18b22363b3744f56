"""Are Table 1's KD students' conv5 features, or their classifiers, what they lack? A fresh
linear classifier (Adam, 30 epochs, batch 256) on each student's conv5 output (10,000 training
images), tested on the full test set, against the student's own classifier:
    python runs/table1/diag/kd/head_probe.py [cell|folder/cell|model.pt ...]
(default: the layers-after-the-ReLU students kd_post/max_kd kd_post/smorph_kd, and the teacher;
a bare cell name is the authors' cell: head_probe.log and head_probe_lmorph.log are the
kd_post students, head_probe_pre.log the cells trained with --kd-layers pre)"""
import sys

import numpy as np
import torch

from model.data import load_mnist
from model.train.run import load_model

torch.set_num_threads(1)
torch.manual_seed(0)
xtr, ytr, xte, yte = load_mnist("../shared/data/mnist")


def images(x):
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(256).unsqueeze(1)


Xtr, Ytr = images(xtr[:10000]), torch.from_numpy(np.asarray(ytr[:10000], dtype=np.int64))
Xte, Yte = images(xte), torch.from_numpy(np.asarray(yte, dtype=np.int64))
for cell in sys.argv[1:] or ["kd_post/max_kd", "kd_post/smorph_kd",
                             "runs/recipe_long/teacher/model.pt"]:
    where = cell if "/" in cell else f"authors/{cell}"
    path = cell if cell.endswith(".pt") else f"runs/table1/{where}/model.pt"
    net = load_model(path, "cpu").eval()
    k = len(net.forms) - 1
    with torch.no_grad():
        ftr = torch.cat([net.run(Xtr[i:i + 500], 0, k).flatten(1) for i in range(0, 10000, 500)])
        fte = torch.cat([net.run(Xte[i:i + 500], 0, k).flatten(1) for i in range(0, 10000, 500)])
        own = float((net.run(fte.view(-1, *net.run(Xte[:1], 0, k).shape[1:]), k).argmax(1)
                     == Yte).float().mean())
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    head = torch.nn.Linear(ftr.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    for ep in range(30):
        perm = torch.randperm(len(ftr))
        for i in range(0, len(ftr), 256):
            j = perm[i:i + 256]
            loss = torch.nn.functional.cross_entropy(head((ftr[j] - mu) / sd), Ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        fresh = float((head((fte - mu) / sd).argmax(1) == Yte).float().mean())
        tr = float((head((ftr - mu) / sd).argmax(1) == Ytr).float().mean())
    ch = (ftr.view(len(ftr), -1, *net.run(Xte[:1], 0, k).shape[2:]) > 0).float().mean((0, 2, 3))
    print(f"{cell}: own classifier {own:.4f}; fresh linear on conv5 {fresh:.4f} "
          f"(train {tr:.4f}); conv5 outputs > 0: {float((ftr > 0).float().mean()):.3f}; "
          f"channels never > 0: {int((ch == 0).sum())} of {len(ch)}; per channel "
          + " ".join(f"{float(c):.2f}" for c in ch))
