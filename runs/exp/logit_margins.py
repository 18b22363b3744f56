"""Top-2 logit margins of integer exports through the NumPy reference.

argv: N EXPORT [EXPORT ...]   (the first N MNIST test images)
"""
import sys
sys.path.insert(0, '.')
import numpy as np
from model.data import default_data_dir, load_mnist
from model.export import load_export
from model.reference import ref_network_batch

n = int(sys.argv[1])
_, _, xte, yte = load_mnist(default_data_dir())
for f in sys.argv[2:]:
    e = load_export(f)
    lg = np.asarray(ref_network_batch(e.params, e.layers, e.tensors, e.codes(xte[:n])), dtype=np.int64)
    s = np.sort(lg, axis=1)
    ties = s[:, -1] == s[:, -2]
    pred = lg.argmax(1)
    print(f"{f}: accuracy {(pred == yte[:n]).mean():.4f}, exact top-2 ties {ties.mean():.4f}, "
          f"top-2 margin percentiles 10/25/50/75 {np.percentile(s[:, -1] - s[:, -2], [10, 25, 50, 75])}, "
          f"logits {lg.min()} .. {lg.max()}")
