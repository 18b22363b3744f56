"""conv5 of the reduced S-morph / layer-wise probe (python -m model.experiments table1 --schedule
reduced --train-limit 3000 --test-limit 2000 --only smorph_layerwise; its log beside this file),
converted to 4-BM S-morph at alpha 1 and refitted to the teacher or to its own classical conv5:
    python runs/table1/diag/refit_target/conv5_probe.py"""
import torch, numpy as np, copy
torch.set_num_threads(1)
from model.train.run import load_model
from model.train.config import TrainConfig
from model.train.convert import convert_layer, refit_to
from model.data import load_mnist
xtr, ytr, xte, yte = load_mnist("../shared/data/mnist")
X = torch.from_numpy(np.ascontiguousarray(xtr[:2000])).float().div_(256).unsqueeze(1)
Xt = torch.from_numpy(np.ascontiguousarray(xte[:2000])).float().div_(256).unsqueeze(1)
Yt = torch.from_numpy(np.asarray(yte[:2000], dtype=np.int64))
net = load_model("runs/table1/diag/refit_target/smorph_layerwise_probe_after_layer3.pt", "cpu")
teacher = load_model("runs/recipe_long/teacher/model.pt", "cpu")
print(net.forms)
with torch.no_grad():
    acc = float((net(Xt).argmax(1) == Yt).float().mean()); print("after conv4 stage", acc)
    cfg = TrainConfig(form="bm4", op="smorph", alpha=1.0, learn_alpha=True, keep=(5,), refit_gain="auto")
    for gain in ["auto", "spread"]:
        n2 = copy.deepcopy(net)
        convert_layer(replace_cfg := cfg, n2, 4)
        import dataclasses
        refit_to(dataclasses.replace(cfg, refit_gain=gain), n2, 4, teacher, X, print)
        out = n2(Xt)
        pre = n2.run_layer(4, n2.run(Xt, 0, 4), pre=True)
        tpre = net.run_layer(4, net.run(Xt, 0, 4), pre=True)
        print(gain, "acc", float((out.argmax(1) == Yt).float().mean()), "pred hist", torch.bincount(out.argmax(1), minlength=10).tolist())
        print("  conv5 pre: student mean/std", float(pre.mean()), float(pre.std()), "relu>0", float((pre>0).float().mean()),
              "| classical conv5 of this net: mean/std", float(tpre.mean()), float(tpre.std()), "relu>0", float((tpre>0).float().mean()))
        print("  per-channel std student", [round(float(v),3) for v in pre.std((0,2,3))])
        print("  per-channel std classic", [round(float(v),3) for v in tpre.std((0,2,3))])
print("---- check on the refit images")
n2 = copy.deepcopy(net)
convert_layer(cfg, n2, 4)
refit_to(cfg, n2, 4, teacher, X, print)
with torch.no_grad():
    pre = n2.run_layer(4, n2.run(X, 0, 4), pre=True)
    t = teacher.run_layer(4, teacher.run(X, 0, 4), pre=True)
    print("student mean", float(pre.mean()), "target mean", float(t.mean()), "mse", float(((pre-t)**2).mean()))
    print("alpha", [float(m.op.alpha) for m in n2.bm_layers()])
print("---- refit to the network's own classical conv5")
for gain in ["auto", "spread"]:
    n2 = copy.deepcopy(net)
    convert_layer(cfg, n2, 4)
    refit_to(dataclasses.replace(cfg, refit_gain=gain), n2, 4, net, X, print)
    with torch.no_grad():
        out = n2(Xt); pre = n2.run_layer(4, n2.run(Xt, 0, 4), pre=True)
    print(gain, "acc", float((out.argmax(1) == Yt).float().mean()), "relu>0", float((pre>0).float().mean()))
