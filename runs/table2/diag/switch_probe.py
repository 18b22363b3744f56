"""Issue 23 probe: the LSE -> MAX switch of a two-stage cell, without the refit.

    python runs/table2/diag/switch_probe.py CKPT [--teacher T] [--data-dir D] [--limit N]

CKPT: a two-stage run's ``ckpt.pt`` saved at the end of stage 1 (tag ``stage1``; e.g. copied
before stage 2's first epoch overwrote it). Prints the test accuracy of the stage-1 network
(LSE at its frozen alpha), of the same weights with every BM layer switched to the hard max
(what stage 2 would start from without a refit), and with the switch refitted to the teacher's
pre-activations (what ``method_two_stage`` does) and to the LSE network's own.
"""

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch  # noqa: E402

from model.maxops import MaxOp  # noqa: E402
from model.train import TrainConfig  # noqa: E402
from model.train.convert import convert_layer, load_teacher, refit_to  # noqa: E402
from model.train.data import evaluate, load_data  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("--teacher", default="runs/recipe_long/teacher/model.pt")
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--limit", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg_path = Path(a.ckpt).parent / "config.json"
    known = TrainConfig.__dataclass_fields__
    saved = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k in known}
    cfg = replace(TrainConfig(**saved), teacher=a.teacher, data_dir=a.data_dir,
                  test_limit=a.limit, op="lse", learn_alpha=False)
    ck = torch.load(a.ckpt, weights_only=False, map_location="cpu")
    if ck.get("tag") != "stage1":
        raise SystemExit(f"{a.ckpt}: tag {ck.get('tag')!r}, not a stage-1 checkpoint")
    teacher = load_teacher(cfg)
    net = copy.deepcopy(teacher)
    for i in range(len(net.layers)):
        if i not in cfg.keep:
            convert_layer(cfg, net, i)
    net.load_state_dict(ck["net"])
    net.eval()
    data = load_data(cfg)
    xte, yte = data[2], data[3]
    t0 = time.time()
    print(f"stage 1 (LSE, alphas {[round(float(m.op.alpha), 3) for m in net.bm_layers()]}): "
          f"{evaluate(net, xte, yte):.4f}", flush=True)
    lse = copy.deepcopy(net)
    for m in net.bm_layers():
        m.set_op(MaxOp("max"))
    print(f"switched to the hard max, no refit: {evaluate(net, xte, yte):.4f}", flush=True)
    x = data[0][: cfg.refit_images]
    for name, ref in (("the teacher's", teacher), ("the LSE network's own", lse)):
        n2 = copy.deepcopy(net)
        for i in range(len(n2.layers)):
            if i not in cfg.keep:
                refit_to(cfg, n2, i, ref, x, log=print)
        print(f"switched, refitted to {name} pre-activations: {evaluate(n2, xte, yte):.4f}",
              flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
