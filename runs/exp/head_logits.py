"""What a trained LeNet's classifier outputs: predicted-class counts, per-class logit mean and
spread over test images, and the classifier's bias range (a bias-dominated, collapsed head shows
tiny spreads and one class predicted everywhere).

argv: MODEL [N]   (MODEL a model.pt of model.train; N first test images, default 1000)
"""
import sys

import torch

sys.path.insert(0, ".")
from model.train import TrainConfig, load_data, load_model  # noqa: E402

torch.set_num_threads(1)
net = load_model(sys.argv[1]).eval()
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
_, _, xte, yte = load_data(TrainConfig(test_limit=n, train_limit=1))
with torch.no_grad():
    logits = net(xte)
print(f"{sys.argv[1]}: {n} test images, accuracy {(logits.argmax(1) == yte).float().mean():.4f}")
print("non-finite logits:", int((~torch.isfinite(logits)).sum()))
print("predicted-class counts:", torch.bincount(logits.argmax(1), minlength=10).tolist())
print("logit mean per class:", [round(v, 2) for v in logits.mean(0).tolist()])
print("logit std per class: ", [round(v, 3) for v in logits.std(0).tolist()])
b = net.layers[-1].bias.detach()
print(f"classifier bias: {float(b.min()):.2f} .. {float(b.max()):.2f}")
