import torch, numpy as np
torch.set_num_threads(1); torch.manual_seed(0)
from model.registry import create_net
from model.train.config import TrainConfig
from model.train.convert import converted, convert_layer
from model.data import load_mnist
xtr, ytr, _, _ = load_mnist("../shared/data/mnist")
x = torch.tensor(xtr[:256], dtype=torch.float32).reshape(-1,1,28,28)
if x.max() > 2: x = x / 255
y = torch.tensor(ytr[:256]).long()
for op in ["smorph", "lmorph", "lse", "max"]:
    cfg = TrainConfig(form="bm4", op=op, alpha=1.0, learn_alpha=True, keep=(5,))
    net = create_net("lenet")
    for i in converted(cfg, net): convert_layer(cfg, net, i)
    h = x; stats = []
    acts = []
    for i, l in enumerate(net.layers):
        h = l(h)
        h.retain_grad(); acts.append(h)
        stats.append(f"{h.abs().mean().item():.2e}")
        if i < 5: h = torch.relu(h)
        if i == 4: h = h.flatten(1)
    loss = torch.nn.functional.cross_entropy(acts[-1], y); loss.backward()
    g = [f"{p.grad.norm().item():.1e}" if p.grad is not None else "-" for n,p in net.named_parameters() if "weight" in n or "v" in n.split(".")[-1]]
    print(op, "out|mean|", stats, "loss", round(loss.item(),4))
    print("   grads", [(n, f"{p.grad.norm().item():.1e}") for n,p in net.named_parameters() if p.grad is not None][:14])
