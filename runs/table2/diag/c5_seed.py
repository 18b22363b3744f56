"""Issue 23: seed runs/table2/diag/c5_<name> at the start of conv5's stage of the authors'
MAX / layer-wise KD cell (runs/table2/authors/max_lwkd), as runs/i22/c5bm2/seed.py does for
runs/i22/sj.   python runs/table2/diag/c5_seed.py NAME
"""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "c5bm2_seed", Path(__file__).resolve().parents[2] / "i22" / "c5bm2" / "seed.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
stage4_nets, seed = _mod.stage4_nets, _mod.seed
SRC = Path("runs/table2/authors/max_lwkd")

if __name__ == "__main__":
    seed(SRC, Path("runs/table2/diag") / f"c5_{sys.argv[1]}", [0.9896, 0.9771, 0.9603, 0.9485])
