"""Probe: a 1.5-BM hard-max classifier initialised as a per-class channel max
(class j reads conv5 channel j at every position), all layers trained end to end.

argv: EPOCHS LR SRC [DEVICE [TAG [GAIN]]]   SRC: model.pt whose convs are kept (classical or BM);
GAIN: the starting branch weight of each class's own channel (default 1)
"""
import sys, time, math, torch
sys.path.insert(0, '.')
sys.path.insert(0, 'runs/exp')
from model.train import load_model, TrainConfig, load_data, evaluate
from model.maxops import MaxOp
from probe_loop import kd_epoch
torch.set_num_threads(1)
EP = int(sys.argv[1]); LR = float(sys.argv[2]); SRC = sys.argv[3]
dev = sys.argv[4] if len(sys.argv) > 4 else 'cpu'
tag = sys.argv[5] if len(sys.argv) > 5 else 'x'
GAIN = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
torch.manual_seed(0)
xtr, ytr, xte, yte = load_data(TrainConfig(device=dev))
net = load_model(SRC, dev)
teacher = load_model('runs/lenet_classical/model.pt', dev)
if net.forms[5] == 'classical':
    net.convert_layer(5, 'bm15', op=MaxOp('max'), dx=0.0)
layer = net.layers[5]
layer.set_op(MaxOp('max'))
C, HW = 16, 18 * 18
with torch.no_grad():
    dw = float(layer.dw)
    w = torch.full((10, C, HW), dw * 2**-10 - dw)
    for j in range(10):
        w[j, j] = GAIN - dw
    layer.weight.copy_(w.view(10, -1))
    layer.bias.zero_()
    layer.corr_x.fill_(0.0)
print(net.forms, layer, 'init acc', evaluate(net, xte, yte), flush=True)
opt = torch.optim.Adam(net.parameters(), lr=LR)
nb = math.ceil(60000 / 128); total = EP * nb
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1, s / total))))
for ep in range(EP):
    t0 = time.time()
    loss = kd_epoch(net, teacher, xtr, ytr, opt, sched)
    print(f'ep {ep} loss {loss:.4f} acc {evaluate(net, xte, yte):.4f} {time.time()-t0:.0f}s corr_x {float(layer.corr_x):.4g}', flush=True)
torch.save(net.state_dict(), f'runs/exp/chan_head_{tag}.pt')
