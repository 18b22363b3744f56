"""Issue 23: seed runs/table2/diag/c5_<name> at the start of conv5's stage of the authors'
MAX / layer-wise KD cell (runs/table2/authors/max_lwkd), as runs/i22/c5bm2/seed.py does for
runs/i22/sj.   python runs/table2/diag/c5_seed.py NAME
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.train.run import load_model  # noqa: E402

src, out = Path("runs/table2/authors/max_lwkd"), Path("runs/table2/diag") / f"c5_{sys.argv[1]}"
out.mkdir(parents=True, exist_ok=True)
snaps = [load_model(str(src / f"after_layer{j}.pt"), "cpu") for j in range(4)]
student = load_model("runs/recipe_long/teacher/model.pt", "cpu")
tutor = load_model("runs/recipe_long/teacher/model.pt", "cpu")
for j in range(4):
    student.layers[j] = snaps[3].layers[j]
for j in range(1, 5):
    tutor.layers[j].load_state_dict(snaps[j - 1].layers[j].state_dict())
tutor.layers[5].load_state_dict(snaps[3].layers[5].state_dict())
torch.save({"tag": "lwkd", "stage": 4, "epoch": 0, "opt_state": None,
            "accs": [0.9896, 0.9771, 0.9603, 0.9485],
            "student": student.state_dict(), "tutor": tutor.state_dict(), "segments": []},
           out / "ckpt.pt")
print("seeded", out, student.forms)
