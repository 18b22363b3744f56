"""The KD epoch the classifier probes share (``e2e_head.py``, ``chan_head.py``)."""
import math

import torch
import torch.nn.functional as F


def kd_epoch(net, teacher, xtr, ytr, opt, sched, *, bs=128, before_step=None):
    """One epoch of ``CE(y) + CE(teacher's softmax)`` in shuffled batches; the mean loss.

    ``before_step(j, nb)`` runs before batch ``j`` of ``nb`` (e.g. an alpha schedule).
    """
    n = len(xtr)
    nb = math.ceil(n / bs)
    perm = torch.randperm(n, device=xtr.device)
    tot = 0.0
    net.train()
    for j in range(nb):
        if before_step is not None:
            before_step(j, nb)
        idx = perm[j * bs:(j + 1) * bs]
        xb = xtr[idx]
        with torch.no_grad():
            tl = teacher(xb)
        out = net(xb)
        loss = F.cross_entropy(out, ytr[idx]) + F.cross_entropy(out, F.softmax(tl, 1))
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        tot += float(loss.detach())
    net.eval()
    return tot / nb
