"""Write stage1.pt for runs/table2/authors/lse-max_kd (issue 23).

That cell stopped in stage 2 (epoch 1) before two_stage wrote stage1.pt, so its resume would
train stage 1 again. The hard-max network's structure comes from the cell's config and its
weights from the stage-2 checkpoint, which the resume loads anyway. Stage 1's figures are the
ones its log measured (train.log: stage1 epoch 5/5 test acc 0.9940; LSE -> MAX 0.0974).
python runs/table2/fix/seed_stage1.py
"""
import json
from pathlib import Path

import torch

from model.maxops import MaxOp
from model.train import TrainConfig, convert_layer, load_model, net_to_dict

d = Path("runs/table2/authors/lse-max_kd")
cfg = json.loads((d / "config.json").read_text())
cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
student = load_model(cfg.teacher)
for i in range(len(student.layers)):
    if i not in cfg.keep:
        convert_layer(cfg, student, i).set_op(MaxOp("max"))
ck = torch.load(d / "ckpt.pt", weights_only=False)
assert ck["tag"] == "stage2", ck["tag"]
student.load_state_dict(ck["net"])
torch.save({**net_to_dict(student), "result": {"accuracy": 0.9940}, "accuracy_lse_max": 0.0974},
           d / "stage1.pt")
print("wrote", d / "stage1.pt", student.forms)
