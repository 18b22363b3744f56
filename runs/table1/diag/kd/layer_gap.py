"""Where Table 1's KD students part from the teacher, layer by layer (2,000 test images):
    python runs/table1/diag/kd/layer_gap.py [cell|folder/cell ...]
(default: kd_post/max_kd kd_post/smorph_kd, the students of layer_gap.log; a bare cell name is
the authors' cell)
For each converted layer: the student's pre-activation on its own path against the teacher's
(relative MSE: mse / the teacher's variance; correlation), and the test accuracy of the hybrid
that runs the student up to and including that layer and the teacher after it."""
import sys

import numpy as np
import torch

from model.data import load_mnist
from model.train.run import load_model

torch.set_num_threads(1)
_, _, xte, yte = load_mnist("../shared/data/mnist")
X = torch.from_numpy(np.ascontiguousarray(xte[:2000])).float().div_(256).unsqueeze(1)
Y = torch.from_numpy(np.asarray(yte[:2000], dtype=np.int64))
teacher = load_model("runs/recipe_long/teacher/model.pt", "cpu").eval()
for cell in sys.argv[1:] or ["kd_post/max_kd", "kd_post/smorph_kd"]:
    where = cell if "/" in cell else f"authors/{cell}"
    net = load_model(f"runs/table1/{where}/model.pt", "cpu").eval()
    with torch.no_grad():
        acc = float((net(X).argmax(1) == Y).float().mean())
        print(f"{cell}: forms {net.forms}, student {acc:.4f}, teacher "
              f"{float((teacher(X).argmax(1) == Y).float().mean()):.4f}")
        hs, ht = X, X
        for i in range(len(net.forms) - 1):
            ps, pt = net.run_layer(i, hs, pre=True), teacher.run_layer(i, ht, pre=True)
            rel = float(((ps - pt) ** 2).mean() / pt.var())
            corr = float(torch.corrcoef(torch.stack([ps.flatten(), pt.flatten()]))[0, 1])
            hs, ht = net.run_layer(i, hs), teacher.run_layer(i, ht)
            hyb = float((teacher.run(hs, i + 1).argmax(1) == Y).float().mean())
            print(f"  layer {i} ({net.forms[i]}): relative mse {rel:.3f}, correlation {corr:.3f}, "
                  f"student to here then teacher {hyb:.4f}")
