"""Seed runs/i22/sj2/a after its conv2 stage from runs/i22/sj/a (issue 22).

Stages 0 and 1 train the same layers in both runs (conv1; conv1 + conv2: --stage-joint 1 and 2
reach back to layer 0 alike), with the same seed and schedule, so sj's are sj2's: this writes
the checkpoint lwkd saves after stage 1 (checked: sj2 rerun from stage 1 repeats sj's refit and
converted accuracy to the digit).
python runs/i22/sj2/seed.py   -> runs/i22/sj2/a/ckpt.pt (and its after_layer0/1.pt copied)
"""
from pathlib import Path

import torch

from model.train.run import load_model

src, out = Path("runs/i22/sj/a"), Path("runs/i22/sj2/a")
out.mkdir(parents=True, exist_ok=True)
teacher = load_model("runs/recipe_long/teacher/model.pt", "cpu")
snap = load_model(str(src / "after_layer1.pt"), "cpu")  # student conv1-2 + the tutor's tail
student, tutor = load_model("runs/recipe_long/teacher/model.pt", "cpu"), teacher
student.layers[0], student.layers[1] = snap.layers[0], snap.layers[1]
for j in range(2, len(tutor.layers)):
    tutor.layers[j].load_state_dict(snap.layers[j].state_dict())
# the tutor's layer 1 trained (as the tail) in stage 0 only: after_layer0's layer 1
tutor.layers[1].load_state_dict(load_model(str(src / "after_layer0.pt"), "cpu").layers[1].state_dict())
torch.save({"tag": "lwkd", "stage": 2, "epoch": 0, "opt_state": None, "accs": [0.9923, 0.9901],
            "student": student.state_dict(), "tutor": tutor.state_dict(), "segments": []},
           out / "ckpt.pt")
print("seeded", out, student.forms)
