"""Experiment: classifier as 1.5-BM, LSE annealed 1->A then hard max, trained jointly with conv5."""
import sys, time, math, copy, torch, torch.nn.functional as F
sys.path.insert(0, '.')
from model.train import load_model, TrainConfig, load_data, cache_inputs, evaluate
from model.maxops import MaxOp
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
EP = int(sys.argv[2]) if len(sys.argv) > 2 else 6
AEND = float(sys.argv[3]) if len(sys.argv) > 3 else 64
JOINT = int(sys.argv[4]) if len(sys.argv) > 4 else 1
torch.manual_seed(0)
cfg = TrainConfig()
xtr, ytr, xte, yte = load_data(cfg)
net = load_model('runs/lenet_bm15_max_lwkd/after_layer4.pt')
teacher = load_model('runs/lenet_classical/model.pt')
print(net.forms, evaluate(net, xte, yte), flush=True)
first = 5 - JOINT
t0 = time.time()
ctr = cache_inputs(net, first, xtr, 8.0); cte = cache_inputs(net, first, xte, 8.0)
print('cached', ctr.shape, time.time() - t0, flush=True)
with torch.no_grad():
    ttr = torch.cat([teacher(xtr[i:i+1000]) for i in range(0, 60000, 1000)])
layer = net.convert_layer(5, 'bm15', op=MaxOp('lse', alpha=1.0))
print(layer, flush=True)
def fwd(h):
    return net.run(h, first)
def ev():
    with torch.no_grad():
        return sum(int((fwd(cte[i:i+500]).argmax(1) == yte[i:i+500]).sum()) for i in range(0, 10000, 500)) / 10000
print('exact LSE1', ev(), flush=True)
params = [p for m in net.layers[first:] for p in m.parameters()]
for p in params: p.requires_grad_(True)
opt = torch.optim.Adam(params, lr=1e-3)
nb = math.ceil(60000 / 128); total = EP * nb
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1, s / total))))
lse_ep = EP - 2
for ep in range(EP):
    if ep >= lse_ep and layer.op.kind != 'max':
        layer.set_op(MaxOp('max')); print('-> hard max', ev(), flush=True)
    perm = torch.randperm(60000); tot = 0; t0 = time.time()
    for j in range(nb):
        idx = perm[j*128:(j+1)*128]
        if layer.op.kind == 'lse':
            f = min(1.0, (ep + j / nb) / lse_ep / 0.9)
            layer.op.set_alpha(AEND ** f)
        out = fwd(ctr[idx])
        loss = F.cross_entropy(out, ytr[idx]) + F.cross_entropy(out, F.softmax(ttr[idx], 1))
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); tot += float(loss)
    print(f'ep {ep} alpha {float(layer.op.alpha) if layer.op.kind=="lse" else "max"} loss {tot/nb:.4f} acc {ev():.4f} {time.time()-t0:.0f}s', flush=True)
layer.set_op(MaxOp('max'))
print('final hard max acc', ev(), flush=True)
torch.save(net.state_dict(), f'runs/exp/head_joint_{EP}_{int(AEND)}_{JOINT}.pt')
