"""Proxy: classical convs + a BM classifier (LSE 1 -> A, then hard max), all layers trained,
with a per-class (per output column) correction coefficient corr_x instead of one per layer.

argv: EPOCHS ALPHA_END LR INIT [FORM]; FORM bm15 (default) or bm4 (e2e_head4.txt).
"""
import sys, time, math, torch, torch.nn.functional as F
sys.path.insert(0, '.')
from model.train import load_model, TrainConfig, load_data, evaluate
from model.maxops import MaxOp
torch.set_num_threads(1)
EP = int(sys.argv[1]); AEND = float(sys.argv[2]); LR = float(sys.argv[3]); SRC = sys.argv[4]
torch.manual_seed(0)
xtr, ytr, xte, yte = load_data(TrainConfig())
net = load_model(SRC)
teacher = load_model('runs/lenet_classical/model.pt')
layer = net.layers[5]
if net.forms[5] == 'classical':
    layer = net.convert_layer(5, sys.argv[5] if len(sys.argv) > 5 else 'bm15', op=MaxOp('lse', alpha=1.0))
layer.corr_x = torch.nn.Parameter(torch.full((layer.out_ch,), float(layer.corr_x)))
print(net.forms, evaluate(net, xte, yte), flush=True)
opt = torch.optim.Adam(net.parameters(), lr=LR)
nb = math.ceil(60000 / 128); total = EP * nb
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1, s / total))))
lse_ep = EP - 2
for ep in range(EP):
    if ep >= lse_ep and layer.op.kind != 'max':
        layer.set_op(MaxOp('max')); print('-> hard max', evaluate(net, xte, yte), flush=True)
    perm = torch.randperm(60000); tot = 0; t0 = time.time(); net.train()
    for j in range(nb):
        idx = perm[j*128:(j+1)*128]
        if layer.op.kind == 'lse':
            layer.op.set_alpha(AEND ** min(1.0, (ep + j / nb) / lse_ep / 0.9))
        xb = xtr[idx]
        with torch.no_grad(): tl = teacher(xb)
        out = net(xb)
        loss = F.cross_entropy(out, ytr[idx]) + F.cross_entropy(out, F.softmax(tl, 1))
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); tot += float(loss.detach())
    net.eval()
    print(f'ep {ep} corr {[round(float(c), 4) for c in layer.corr_x]} {layer.op.extra_repr()} loss {tot/nb:.4f} acc {evaluate(net, xte, yte):.4f} {time.time()-t0:.0f}s', flush=True)
layer.set_op(MaxOp('max'))
print('final hard max acc', evaluate(net, xte, yte), flush=True)
torch.save(net.state_dict(), f'runs/exp/e2e_head_pcc_{EP}_{int(AEND)}_{net.forms[5]}.pt')
