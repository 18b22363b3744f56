"""ResNet-22 (CIFAR-10): the switchable network, its training methods, data-parallel training,
the Table 3 driver and the integer reference."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import train_cifar
from model.export import ExportError, compute_checksum, load_export
from model.layers import BM15Layer, convert
from model.maxops import MaxOp
from model.params import BMParams
from model.quantize.resnet import float_trace, hard_max, quantize_resnet
from model.reference import ref_log
from model.reference.resnet import (
    align,
    gap,
    load_resnet_export,
    log_wide,
    rescale,
    resnet_forward,
    save_resnet_export,
)
from model.registry import create_net
from model.resnet import ResNet22, ResNetConfig

ROOT = Path(__file__).resolve().parents[1]


def _randomise_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in net.bns:
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return net


# -- the network -------------------------------------------------------------------------------
def test_resnet22_has_22_convs_the_keras_widths_and_a_classifier():
    net = create_net("resnet22")
    convs = [m for m in net.layers[:-1]]
    assert len(convs) == 22 and len(net.layers) == 23
    outs = sorted({m.out_channels for m in convs})
    assert outs == [16, 64, 128, 256]
    assert [b.proj is not None for b in net.plan] == [True, False] * 3
    assert [b.stride for b in net.plan] == [1, 1, 2, 1, 2, 1]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # about the Keras ResNet20 v2's 574k parameters (ours has no pre-activation BN on the input)
    assert 540_000 < sum(p.numel() for p in net.parameters()) < 600_000


@pytest.mark.parametrize("form", ["bm15", "bm4"])
def test_converted_resnet_equals_classical_at_lse_alpha_1(form):
    torch.manual_seed(0)
    net = _randomise_bn(ResNet22(ResNetConfig(stem=4))).eval()
    x = torch.rand(3, 3, 32, 32)
    ref = net(x)
    bm = copy.deepcopy(net)
    for i in range(len(bm.layers)):
        bm.convert_layer(i, form, op=MaxOp("lse", alpha=1.0))
    assert set(bm.forms) == {form}
    torch.testing.assert_close(bm(x), ref, rtol=1e-4, atol=1e-5)


def test_padded_and_strided_bm_conv_gradcheck_and_limit():
    torch.manual_seed(1)
    for k, stride, pad in ((3, 1, 1), (1, 2, 0), (3, 2, 1)):
        conv = torch.nn.Conv2d(3, 4, k, stride=stride, padding=pad).double()
        bm = convert(conv, "bm15", op=MaxOp("lse", alpha=1.0)).double()
        x = torch.rand(2, 3, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(bm(x), conv(x))
        xg = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t, m=bm: m(t), (xg,))
        # as alpha grows the output tends to the hard max's
        hard = copy.deepcopy(bm)
        hard.set_op(MaxOp("max"))
        bm.set_op(MaxOp("lse", alpha=400.0))
        torch.testing.assert_close(bm(x), hard(x), rtol=2e-2, atol=2e-2)


def test_branch_ignores_autocast():
    conv = convert(torch.nn.Conv2d(3, 4, 3, padding=1), "bm15", op=MaxOp("lse", alpha=8.0))
    x = torch.rand(2, 3, 8, 8)
    ref = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    torch.testing.assert_close(y.float(), ref)


# -- data and training -------------------------------------------------------------------------
def _fake_cifar(root: Path, n_train=50, n_test=40) -> Path:
    """A CIFAR-10 python-batches folder whose class is readable from the image (its mean)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 3072)) + (y[:, None] * 20)
        return {b"data": x.astype(np.uint8), b"labels": [int(v) for v in y]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    return root


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return _fake_cifar(tmp_path_factory.mktemp("data"))


def test_augment_crops_and_flips_pixels_exactly():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32) % 251 + 1
    g = torch.Generator().manual_seed(3)
    y = train_cifar.augment(x, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    for b in range(2):  # every output is a shifted (and maybe mirrored) window of the padded input
        xp = torch.nn.functional.pad(x[b], (4, 4, 4, 4))
        found = any(
            torch.equal(y[b], w) or torch.equal(y[b], w.flip(-1))
            for oy in range(9)
            for ox in range(9)
            for w in [xp[:, oy : oy + 32, ox : ox + 32]]
        )
        assert found


def _run(args, cifar_dir, out):
    base = ["--data-dir", str(cifar_dir), "--stem", "4", "--batch-size", "16", "--no-progress"]
    return train_cifar.main(["--out", str(out), *args, *base])


def test_train_cifar_methods_end_to_end(cifar_dir, tmp_path):
    res = _run(["--method", "classical", "--epochs", "2"], cifar_dir, tmp_path / "cls")
    assert res["train_images"] == 50 and res["test_images"] == 40 and res["data"] == "CIFAR-10"
    teacher = str(tmp_path / "cls" / "model.pt")
    lw = _run(
        ["--method", "lwkd", "--teacher", teacher, "--layer-epochs", "0.34", "--op", "max"],
        cifar_dir,
        tmp_path / "lwkd",
    )
    assert len(lw["per_layer_accuracy"]) == 23 and lw["forms"] == ["bm15"]
    net = train_cifar.load_resnet(tmp_path / "lwkd" / "model.pt")
    assert all(isinstance(m, BM15Layer) and m.op.kind == "max" for m in net.layers)
    ts = _run(
        [
            "--method",
            "two_stage",
            "--first-method",
            "kd",
            "--teacher",
            teacher,
            "--epochs",
            "1",
            "--alpha-end",
            "8",
        ],
        cifar_dir,
        tmp_path / "ts",
    )
    assert {"accuracy_lse", "accuracy_lse_max", "accuracy"} <= set(ts)
    saved = json.loads((tmp_path / "ts" / "result.json").read_text())
    assert saved["accuracy"] == ts["accuracy"]


def test_train_cifar_lwkd_resumes_without_training_its_done_layers_again(cifar_dir, tmp_path,
                                                                         monkeypatch, capsys):
    """ckpt.pt holds only the current phase; a layer-wise run stopped in layer 2's phase
    resumes there (it trained every layer again before, from the teacher's weights) and ends
    like the run that was never stopped."""
    from model.train.run import Run

    _run(["--method", "classical", "--epochs", "1"], cifar_dir, tmp_path / "cls")
    args = ["--method", "lwkd", "--teacher", str(tmp_path / "cls" / "model.pt"),
            "--layer-epochs", "0.34", "--op", "max", "--final-epochs", "0.34"]
    whole = _run(args, cifar_dir, tmp_path / "whole")
    save = Run.save_ckpt

    class Stop(Exception):
        pass

    def save_then_stop(self, state):
        save(self, state)
        if state["tag"] == "lwkd_layer2":
            raise Stop

    monkeypatch.setattr(Run, "save_ckpt", save_then_stop)
    with pytest.raises(Stop):
        _run(args, cifar_dir, tmp_path / "cut")
    monkeypatch.setattr(Run, "save_ckpt", save)
    capsys.readouterr()
    res = _run(args, cifar_dir, tmp_path / "cut")
    out = capsys.readouterr().out
    assert "lwkd_layer0: done in an earlier segment" in out
    assert "lwkd_layer1: done in an earlier segment, network restored" in out
    assert "lwkd_layer0: step" not in out and "lwkd_layer2: resuming" in out
    assert res["per_layer_accuracy"] == whole["per_layer_accuracy"]
    a, b = (train_cifar.load_resnet(tmp_path / n / "model.pt").state_dict()
            for n in ("whole", "cut"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_train_cifar_budget_stops_and_still_converts_every_layer(cifar_dir, tmp_path):
    _run(["--method", "classical", "--epochs", "1"], cifar_dir, tmp_path / "cls")
    res = _run(
        [
            "--method",
            "lwkd",
            "--teacher",
            str(tmp_path / "cls" / "model.pt"),
            "--budget-s",
            "0.001",
        ],
        cifar_dir,
        tmp_path / "lwkd",
    )
    assert res["budget_hit"] is True and res["forms"] == ["bm15"]
    assert res["untrained_layers"] == list(range(23))
    # the command that quantizes the LeNets takes the ResNet checkpoint too
    from model import quantize

    out = tmp_path / "r.npz"
    args = ["--checkpoint", str(tmp_path / "lwkd" / "model.pt"), "--out", str(out),
            "--data-dir", str(cifar_dir), "--calib-images", "20", "--threads", "1",
            "--summary", str(tmp_path / "s.json")]
    assert quantize.main(args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["test_images"] == 40 and 0 <= summary["integer_accuracy"] <= 1
    assert len(load_resnet_export(out).units) == 22


def test_train_cifar_rejects_a_missing_teacher(cifar_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        _run(["--method", "kd"], cifar_dir, tmp_path / "kd")
    assert e.value.code == 2


def test_ddp_two_processes_gloo(cifar_dir, tmp_path):
    """Data-parallel training through torchrun: 2 CPU processes on gloo end identical."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "model.train_cifar",
        "--method",
        "classical",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--data-dir",
        str(cifar_dir),
        "--stem",
        "4",
        "--batch-size",
        "16",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2 and res["ranks_identical"] is True
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2


def test_table3_driver_runs_every_cell(cifar_dir, tmp_path):
    from model import experiments

    entries = experiments.main(
        [
            "table3",
            "--data-dir",
            str(cifar_dir),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--results-dir",
            str(tmp_path / "res"),
            "--epochs",
            "0.34",
            "--stem",
            "4",
            "--jobs",
            "2",
        ]
    )
    assert len(entries) == 10
    assert all(e["accuracy"] is not None and e["data"] == "CIFAR-10" for e in entries)
    saved = json.loads((tmp_path / "res" / "table3.json").read_text())
    assert [e["row"] for e in saved] == [e["row"] for e in entries]
    md = (tmp_path / "res" / "table3.md").read_text()
    assert "0.8669" in md and "CIFAR-10, 50 training / 40 test images" in md


@pytest.mark.slow
def test_table3_reduced_run_on_the_real_data(tmp_path):
    """The documented reduced CPU run, smaller still (real CIFAR-10, full-width ResNet-22)."""
    from conftest import require_data
    from model import experiments

    data = require_data(ROOT.parent / "shared" / "data" / "cifar10", "CIFAR-10")
    entries = experiments.main(
        [
            "table3",
            "--data-dir",
            str(data.parent),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--results-dir",
            str(tmp_path / "res"),
            "--subset",
            "256",
            "--test-subset",
            "200",
            "--epochs",
            "0.5",
            "--jobs",
            "2",
        ]
    )
    assert all(e["accuracy"] is not None for e in entries)


# -- the integer reference ---------------------------------------------------------------------
def test_log_wide_equals_the_code_log_unit_and_tracks_log2():
    p = BMParams(log_frac=6, mant_bits=6, w_log_bits=12)
    codes = np.arange(256)
    lw, zw = log_wide(p, codes)
    lc, zc = ref_log(p, codes)
    assert np.array_equal(lw, lc) and np.array_equal(zw, zc)
    u = np.unique(np.random.default_rng(0).integers(1, 1 << 45, 5000))
    lu, zu = log_wide(p, u)
    assert not zu.any()
    # truncating the mantissa to 6 bits loses < 2**-6 relative; the table rounds to 2**-7
    err = np.log2(u) - lu / 64
    assert err.min() > -1 / 128 - 1e-9 and err.max() < np.log2(1 + 2**-6) + 1 / 128


def test_rescale_multiplies_by_the_gain_within_its_bound():
    from model.reference.resnet import ResNetIntParams

    p = ResNetIntParams()
    rng = np.random.default_rng(1)
    z = rng.integers(-(1 << 30), 1 << 30, (50, 3))
    gains = np.array([0.37, 1.9, 0.004])
    lg = np.round(256 * np.log2(gains)).astype(np.int64)
    sign = np.array([1, -1, 1])
    v = rescale(p, z, lg, sign)
    want = z * gains * sign
    big = np.abs(want) > 1000
    rel = np.abs(v - want)[big] / np.abs(want)[big]
    assert rel.max() < 2**-7  # 8-bit mantissa table, 8 log fraction bits, 14-bit exp table
    assert np.array_equal(rescale(p, np.zeros((2, 3), np.int64), lg, sign), np.zeros((2, 3)))


def test_align_and_gap_round_half_up():
    assert list(align(np.array([5, 6, -5, 7]), 3, 1)) == [1, 2, -1, 2]
    assert list(align(np.array([3]), 1, 3)) == [12]
    x = np.full((1, 2, 8, 8), 3)
    x[0, 1] = 0
    x[0, 1, 0, :4] = 8  # sum 32 over 64 positions: mean 0.5 rounds up
    assert gap(x).tolist() == [[3, 1]]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    torch.manual_seed(0)
    net = _randomise_bn(ResNet22(ResNetConfig(stem=4)))
    for i in range(len(net.layers)):
        net.convert_layer(i, "bm15", op=MaxOp("max"))
    calib = torch.randint(0, 256, (64, 3, 32, 32)).float() / 256
    with torch.no_grad():  # batch-norm statistics of the BM network itself
        for bn in net.bns:
            bn.reset_running_stats()
            bn.momentum = None
        net.train()(calib)
    net = hard_max(net.eval())
    exp, _ = quantize_resnet(net, calib)
    path = tmp_path_factory.mktemp("exp") / "r.npz"
    save_resnet_export(path, exp)
    return net, path


def test_integer_resnet_tracks_the_float_hard_max_network(tiny_export):
    net, path = tiny_export
    exp = load_resnet_export(path)
    imgs = torch.randint(0, 256, (24, 3, 32, 32), generator=torch.Generator().manual_seed(5))
    ints = resnet_forward(exp, imgs.numpy().astype(np.uint8), batch=10)
    with torch.no_grad():
        fl = float_trace(net, imgs.float() / 256)["logits"].numpy()
    assert ints.shape == (24, 10) and ints.dtype == np.int64
    # the error compounds over 22 units; the logits still move together
    assert np.corrcoef(ints.ravel(), fl.ravel())[0, 1] > 0.95
    # deterministic, and the batch size does not change a bit
    assert np.array_equal(ints, resnet_forward(exp, imgs.numpy(), batch=24))
    assert np.array_equal(ints, resnet_forward(exp, imgs.numpy(), batch=8, jobs=2))


def test_every_integer_unit_is_within_its_bound_of_the_float_unit(tiny_export):
    """Stage by stage, on the same input codes: at most 3 % of the output range (about 8 codes
    of 256). The error comes from the 7-bit log tables of the branch, the 8-bit rescale tables
    and the rounding of the activations; it is largest where ``E`` and ``S << c`` cancel."""
    from model.quantize.resnet import unit_errors

    net, path = tiny_export
    imgs = np.random.default_rng(7).integers(0, 256, (8, 3, 32, 32))
    errs = unit_errors(net, load_resnet_export(path), imgs)
    assert len(errs) == 22
    assert max(errs) < 0.03, [round(e, 4) for e in errs]


def _rewrite(src, dst, change):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    arrays.pop("checksum")
    change(meta, arrays)
    np.savez(
        dst,
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        checksum=np.frombuffer(compute_checksum(meta, arrays).encode(), np.uint8),
        **arrays,
    )


def test_integer_resnet_export_errors(tiny_export, tmp_path):
    _, path = tiny_export
    raw = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ExportError, match="cut.npz: not a readable"):
        load_resnet_export(cut)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "edit.npz", **dict(arrays, **{"unit3.lw": arrays["unit3.lw"] + 1}))
    with pytest.raises(ExportError, match="checksum mismatch"):
        load_resnet_export(tmp_path / "edit.npz")
    # a consistent file (checksum recomputed) whose shapes do not chain
    _rewrite(path, tmp_path / "chain.npz",
             lambda m, a: a.update({"fc.lw": a["fc.lw"][:, :-1]}))
    with pytest.raises(ExportError, match="invalid ResNet export: the classifier expects"):
        load_resnet_export(tmp_path / "chain.npz")
    _rewrite(path, tmp_path / "miss.npz", lambda m, a: a.pop("unit5.h"))
    with pytest.raises(ExportError, match="missing field 'unit5.h'"):
        load_resnet_export(tmp_path / "miss.npz")
    exp = load_resnet_export(path)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        resnet_forward(exp, np.zeros((2, 1, 28, 28), np.uint8))


def test_one_export_format_for_both_networks(tiny_export, tmp_path):
    """The ResNet export is a ``bm-netexport`` file of graph ``resnet22``; each loader names the
    other graph instead of misreading it, and the chain loader (what ``hw/`` reads) refuses it."""
    _, path = tiny_export
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes())
    assert meta["schema"] == "bm-netexport" and meta["graph"] == "resnet22"
    with pytest.raises(ExportError, match="r.npz: this is an export of the integer ResNet-22"):
        load_export(path)
    lenet = ROOT / "model" / "weights" / "lenet_bm15_max.npz"
    with pytest.raises(ExportError, match="an export of a layer chain"):
        load_resnet_export(lenet)


def test_quantizer_refuses_a_classical_layer():
    net = ResNet22(ResNetConfig(stem=4)).eval()
    with pytest.raises(ValueError, match="all 1.5-BM"):
        quantize_resnet(net, torch.rand(4, 3, 32, 32))
