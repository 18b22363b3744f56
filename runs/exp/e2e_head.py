"""Proxy: classical convs + a BM classifier (LSE 1 -> A, then hard max), all layers trained.

argv: EPOCHS ALPHA_END LR INIT [FORM [pcc]]; FORM bm15 (default) or bm4 (e2e_head4.txt); ``pcc``
gives the bm15 classifier one learnable correction coefficient corr_x per class (output column)
instead of one per layer (e2e_head_pcc.txt).
"""
import sys, time, math, torch
sys.path.insert(0, '.')
sys.path.insert(0, 'runs/exp')
from model.train import load_model, TrainConfig, load_data, evaluate
from model.maxops import MaxOp
from probe_loop import kd_epoch
torch.set_num_threads(1)
EP = int(sys.argv[1]); AEND = float(sys.argv[2]); LR = float(sys.argv[3]); SRC = sys.argv[4]
PCC = len(sys.argv) > 6 and sys.argv[6] == 'pcc'
torch.manual_seed(0)
xtr, ytr, xte, yte = load_data(TrainConfig())
net = load_model(SRC)
teacher = load_model('runs/lenet_classical/model.pt')
layer = net.layers[5]
if net.forms[5] == 'classical':
    layer = net.convert_layer(5, sys.argv[5] if len(sys.argv) > 5 else 'bm15', op=MaxOp('lse', alpha=1.0))
if PCC:
    layer.corr_x = torch.nn.Parameter(torch.full((layer.out_ch,), float(layer.corr_x)))
    print(net.forms, evaluate(net, xte, yte), flush=True)
else:
    print(net.forms, layer, evaluate(net, xte, yte), flush=True)
opt = torch.optim.Adam(net.parameters(), lr=LR)
nb = math.ceil(60000 / 128); total = EP * nb
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1, s / total))))
lse_ep = EP - 2
for ep in range(EP):
    if ep >= lse_ep and layer.op.kind != 'max':
        layer.set_op(MaxOp('max')); print('-> hard max', evaluate(net, xte, yte), flush=True)
    t0 = time.time()

    def alpha(j, nb, ep=ep):
        if layer.op.kind == 'lse':
            layer.op.set_alpha(AEND ** min(1.0, (ep + j / nb) / lse_ep / 0.9))

    loss = kd_epoch(net, teacher, xtr, ytr, opt, sched, before_step=alpha)
    corr = f'corr {[round(float(c), 4) for c in layer.corr_x.detach()]} ' if PCC else ''
    print(f'ep {ep} {corr}{layer.op.extra_repr()} loss {loss:.4f} acc {evaluate(net, xte, yte):.4f} {time.time()-t0:.0f}s', flush=True)
layer.set_op(MaxOp('max'))
print('final hard max acc', evaluate(net, xte, yte), flush=True)
tag = 'e2e_head_pcc' if PCC else 'e2e_head'
torch.save(net.state_dict(), f'runs/exp/{tag}_{EP}_{int(AEND)}_{net.forms[5]}.pt')
