"""Seed runs/i22/c5bm2/<name> at the start of conv5's stage from runs/i22/sj/a (issue 22).

Student conv1-4 are sj's after its conv4 stage (after_layer3.pt); the tutor's layer j (j = 1..4)
is as it left stage j - 1, the last stage that trained it as part of the tail (after_layer{j-1});
its classifier as after stage 3. This is the checkpoint lwkd writes when stage 3 ends.
python runs/i22/c5bm2/seed.py NAME   -> runs/i22/c5bm2/NAME/ckpt.pt
(`seed` and `stage4_nets` are also used by runs/table2/diag/.)
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.train.run import load_model  # noqa: E402


def stage4_nets(src: Path):
    """``(student, tutor)`` as lwkd held them when conv5's stage began, from ``src``'s
    after_layer*.pt."""
    snaps = [load_model(str(src / f"after_layer{j}.pt"), "cpu") for j in range(4)]
    student = load_model("runs/recipe_long/teacher/model.pt", "cpu")
    tutor = load_model("runs/recipe_long/teacher/model.pt", "cpu")
    for j in range(4):
        student.layers[j] = snaps[3].layers[j]
    for j in range(1, 5):
        tutor.layers[j].load_state_dict(snaps[j - 1].layers[j].state_dict())
    tutor.layers[5].load_state_dict(snaps[3].layers[5].state_dict())
    return student, tutor


def seed(src: Path, out: Path, accs: list[float]) -> None:
    """An lwkd checkpoint at the start of stage 4, rebuilt from ``src``'s after_layer*.pt."""
    out.mkdir(parents=True, exist_ok=True)
    student, tutor = stage4_nets(src)
    torch.save({"tag": "lwkd", "stage": 4, "epoch": 0, "opt_state": None, "accs": accs,
                "student": student.state_dict(), "tutor": tutor.state_dict(), "segments": []},
               out / "ckpt.pt")
    print("seeded", out, student.forms)


if __name__ == "__main__":
    seed(Path("runs/i22/sj/a"), Path("runs/i22/c5bm2") / sys.argv[1],
         [0.9923, 0.9901, 0.9889, 0.9866])
