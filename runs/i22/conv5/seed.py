"""Seed a layer-wise KD run at its conv5 stage from runs/i22/lwkd_long/a (issue 22 probe).

python runs/i22/conv5/seed.py OUT   -> OUT/ckpt.pt, as model.train lwkd saves it after stage 3.
The tutor's layer j stopped training after stage j-1, so it is after_layer{j-1}'s layer j.
"""
import sys
from pathlib import Path

import torch

from model.train.run import load_model

src = Path("runs/i22/lwkd_long/a")
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
teacher = load_model("runs/recipe_long/teacher/model.pt", "cpu")
snaps = [load_model(str(src / f"after_layer{j}.pt"), "cpu") for j in range(4)]
tutor = teacher
for j in range(1, 4):
    tutor.layers[j].load_state_dict(snaps[j - 1].layers[j].state_dict())
for j in (4, 5):
    tutor.layers[j].load_state_dict(snaps[3].layers[j].state_dict())
student = snaps[3]
accs = [0.9923, 0.9886, 0.9876, 0.9830]
torch.save({"tag": "lwkd", "stage": 4, "epoch": 0, "opt_state": None, "accs": accs,
            "student": student.state_dict(), "tutor": tutor.state_dict(), "segments": []},
           out / "ckpt.pt")
print("seeded", out, student.forms)
