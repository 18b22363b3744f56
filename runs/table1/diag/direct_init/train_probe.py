"""S-morph/L-morph direct: does a data-scaled init (per layer, the classical init's output std)
let the from-scratch network train?"""
import sys, time, copy, torch, numpy as np, torch.nn.functional as F
torch.set_num_threads(1)
from model.registry import create_net
from model.train.config import TrainConfig
from model.train.convert import converted, convert_layer
from model.data import load_mnist
op, scaled, n, epochs = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
xtr, ytr, xte, yte = load_mnist("../shared/data/mnist")
X = torch.from_numpy(np.ascontiguousarray(xtr[:n])).float().div_(256).unsqueeze(1)
Y = torch.from_numpy(np.asarray(ytr[:n], dtype=np.int64))
Xt = torch.from_numpy(np.ascontiguousarray(xte[:2000])).float().div_(256).unsqueeze(1)
Yt = torch.from_numpy(np.asarray(yte[:2000], dtype=np.int64))
torch.manual_seed(0)
cfg = TrainConfig(form="bm4", op=op, alpha=1.0, learn_alpha=True, keep=(5,))
net = create_net("lenet"); ref = copy.deepcopy(net)
for i in converted(cfg, net): convert_layer(cfg, net, i)
def acts(m, x, upto):
    h = x
    for i, l in enumerate(m.layers[:upto + 1]):
        if i == 5: h = h.flatten(1)
        h = l(h)
        if i < upto: h = torch.relu(h)
    return h
if scaled:
    with torch.no_grad():
        xb = X[:512]
        for i in converted(cfg, net):
            # the classical layer's output spread on the BM network's own inputs
            h_in = acts(net, xb, i - 1) if i else xb
            h_in = torch.relu(h_in) if i else h_in
            t = ref.layers[i](h_in).std()
            o = net.layers[i](h_in)
            g = float(t / (o - net.layers[i]._bias_shape(net.layers[i].bias)).std())
            net.layers[i].weight.mul_(g)
            print(f"layer {i}: gain {g:.3g}", flush=True)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
t0 = time.time()
for ep in range(epochs):
    perm = torch.randperm(n); tot = 0
    for k in range(0, n, 128):
        idx = perm[k:k+128]
        loss = F.cross_entropy(net(X[idx]), Y[idx])
        opt.zero_grad(); loss.backward(); opt.step(); tot += float(loss) * len(idx)
    with torch.no_grad():
        acc = float((net(Xt).argmax(1) == Yt).float().mean())
    print(f"{op} scaled={scaled} epoch {ep+1}: loss {tot/n:.4f} test acc {acc:.4f} ({time.time()-t0:.0f}s)", flush=True)
