"""Issue 22: accuracy of model.pt files on the 60,000 MNIST training images.
python runs/i22/trainacc.py MODEL.pt [...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from model.train.run import load_model
from model.train.data import evaluate
from model.data import load_mnist
import numpy as np
torch.set_num_threads(1)
xtr,ytr,xte,yte = load_mnist("../shared/data/mnist")
X = torch.from_numpy(np.ascontiguousarray(xtr)).float().div_(256.0).unsqueeze(1); Y=torch.from_numpy(ytr.astype(np.int64))
for p in sys.argv[1:]:
    m = load_model(p).eval()
    print(p, "train", evaluate(m, X, Y), flush=True)
