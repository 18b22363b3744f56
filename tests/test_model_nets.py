"""Networks build, switch layer forms and run; the trainer CLI runs end to end on a tiny subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from model.layers import BM4Layer, BM15Layer  # noqa: E402
from model.nets import LeNetConfig  # noqa: E402
from model.registry import create_net  # noqa: E402


def test_lenet_shapes_and_layers():
    net = create_net("lenet")
    assert [type(m).__name__ for m in net.layers] == ["Conv2d"] * 5 + ["Linear"]
    assert [m.out_channels for m in net.layers[:5]] == [32, 16, 16, 16, 16]
    assert net.layers[5].in_features == 5184 and net.cfg.fc_in == 5184
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["lenet-bm15", "lenet-bm4"])
@pytest.mark.parametrize("op", ["max", "lse"])
def test_all_bm_lenet_runs_and_backpropagates(name, op):
    net = create_net(name, op=op, alpha=3.0)
    x = torch.rand(2, 1, 28, 28)
    y = net(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_forms_switch_independently():
    forms = ("bm15", "classical", "bm4", "classical", "bm15", "bm15")
    net = create_net("lenet", forms=forms)
    assert net.forms == forms
    assert isinstance(net.layers[0], BM15Layer) and isinstance(net.layers[2], BM4Layer)
    net.convert_layer(1, "bm15")
    assert net.forms[1] == "bm15" and net.cfg.forms[1] == "bm15"
    assert len(net.features(torch.rand(1, 1, 28, 28))) == 6


def test_config_validation():
    with pytest.raises(ValueError, match="forms"):
        LeNetConfig(forms=("classical",) * 5)
    with pytest.raises(ValueError, match="unknown net"):
        create_net("vgg")


def test_train_cli_tiny(tmp_path: Path, mnist_dir):
    from model.train import load_model, main

    common = ["--train-limit", "256", "--test-limit", "128", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    res = main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    assert 0 <= res["accuracy"] <= 1
    s = tmp_path / "lwkd"
    res = main(
        [
            "--method",
            "lwkd",
            "--teacher",
            str(t / "model.pt"),
            "--out",
            str(s),
            "--layer-epochs",
            "1",
            "--refit-images",
            "64",
            *common,
        ]
    )
    assert len(res["per_layer_accuracy"]) == 6
    cfg = json.loads((s / "config.json").read_text())
    assert cfg["method"] == "lwkd"
    net = load_model(s / "model.pt")
    assert net.forms == ("bm15",) * 6
    for m in net.layers:
        dw = float(m.dw)
        assert dw == 2.0 ** round(torch.log2(torch.tensor(dw)).item())
        c = float(m.corr_x)
        assert c == 2.0 ** round(torch.log2(torch.tensor(c)).item())


def test_lwkd_lse_at_alpha_1_converts_exactly_without_a_refit(tmp_path: Path, mnist_dir,
                                                              capsys):
    """A layer converted to LSE at alpha 1 is the tutor's layer exactly; it is not refitted, and
    the student path keeps the accuracy the previous stage ended with."""
    import re

    from model.train import main

    common = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    capsys.readouterr()
    res = main(["--method", "lwkd", "--op", "lse", "--alpha", "1", "--teacher",
                str(t / "model.pt"), "--out", str(tmp_path / "l"), "--layer-epochs", "1",
                "--refit-images", "64", "--keep", "2,3,4,5", *common])
    out = capsys.readouterr().out
    assert out.count("no refit: LSE at alpha 1") == 2 and "refit: corr_x" not in out
    conv = [float(a) for a in re.findall(r"layer 1 \(bm15\) converted: student-path test acc "
                                         r"([0-9.]+)", out)]
    assert conv == [round(res["per_layer_accuracy"][0], 4)]  # the log prints 4 digits


def test_lwkd_keep_and_kd_norm_and_corr_channels(tmp_path: Path, mnist_dir):
    """``lwkd --keep 5`` converts the convolutions only, the classifier is the tutor's fine-tuned
    one (the student path it was measured on); ``--corr-channels`` survives save and load, and
    ``finetune --kd-temp`` trains from that model."""
    from model.train import load_model, main

    common = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    s = tmp_path / "lwkd"
    res = main(["--method", "lwkd", "--teacher", str(t / "model.pt"), "--out", str(s),
                "--layer-epochs", "1", "--refit-images", "64", "--keep", "5", "--kd-norm",
                "--corr-channels", *common])
    assert len(res["per_layer_accuracy"]) == 5
    net = load_model(s / "model.pt")
    assert net.forms == ("bm15",) * 5 + ("classical",)
    assert all(m.corr_log is not None for m in net.layers[:5])
    x = torch.rand(3, 1, 28, 28)
    ck = torch.load(s / "ckpt.pt", weights_only=False)
    tutor_fc = ck["tutor"]["layers.5.weight"]
    assert torch.equal(net.layers[5].weight, tutor_fc)
    assert torch.isfinite(net(x)).all()
    f = tmp_path / "ft"
    res = main(["--method", "finetune", "--init", str(s / "model.pt"), "--teacher",
                str(t / "model.pt"), "--out", str(f), "--epochs", "1", "--keep", "5",
                "--kd-temp", "4", "--augment", *common])
    assert 0 <= res["accuracy"] <= 1
    assert load_model(f / "model.pt").forms == ("bm15",) * 5 + ("classical",)


def test_lwkd_last_joint_acts_on_the_last_converted_layer(tmp_path: Path, mnist_dir):
    """With ``--keep 5`` the last converted layer is conv5: ``--last-joint 2`` trains conv3 and
    conv4 in its stage too (they move after their own stages), conv2 stays."""
    from model.train import load_model, main

    common = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    s = tmp_path / "joint"
    main(["--method", "lwkd", "--teacher", str(t / "model.pt"), "--out", str(s),
          "--layer-epochs", "1", "--refit-images", "64", "--keep", "5", "--last-joint", "2",
          *common])
    net = load_model(s / "model.pt")
    assert net.forms == ("bm15",) * 5 + ("classical",)
    before = load_model(s / "after_layer3.pt")
    for i in (2, 3):
        assert not torch.equal(net.layers[i].weight, before.layers[i].weight)
    assert torch.equal(before.layers[1].weight, net.layers[1].weight)


def test_lwkd_last_form_converts_the_last_converted_layer(tmp_path: Path, mnist_dir,
                                                         monkeypatch):
    """``--last-form bm4`` with ``--keep 5``: conv5 becomes a 4-branch (on ReLU inputs, 2-branch)
    layer, conv1-4 stay 1.5-BM, also in a run resumed inside conv5's stage."""
    from model.layers import BM4Layer, BM15Layer
    from model.train import load_model, main

    common = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    s = tmp_path / "lf"
    args = ["--method", "lwkd", "--teacher", str(t / "model.pt"), "--out", str(s),
            "--layer-epochs", "1,1,1,1,2", "--refit-images", "64", "--keep", "5",
            "--last-form", "bm4", *common]
    _stop_after_checkpoint(monkeypatch, args,
                           lambda state, n: state["stage"] == 4 and state["epoch"] == 1)
    main(args)
    net = load_model(s / "model.pt")
    assert net.forms == ("bm15",) * 4 + ("bm4", "classical")
    assert all(isinstance(m, BM15Layer) for m in net.layers[:4])
    assert isinstance(net.layers[4], BM4Layer)


def test_finetune_cli_tiny(tmp_path: Path, mnist_dir):
    """``finetune`` converts the remaining layers (classifier through LSE, or kept classical)
    and trains the whole student; the classifier ends with the hard max."""
    from model.train import load_model, main

    common = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    teacher = str(t / "model.pt")
    a = tmp_path / "all"
    res = main(["--method", "finetune", "--init", teacher, "--teacher", teacher, "--out", str(a),
                "--epochs", "2", "--last-op", "lse", "--last-max-epochs", "1", "--refit-images",
                "32", *common])
    assert 0 <= res["accuracy"] <= 1
    net = load_model(a / "model.pt")
    assert net.forms == ("bm15",) * 6
    assert all(m.op.kind == "max" for m in net.layers)
    k = tmp_path / "keep"
    main(["--method", "finetune", "--init", teacher, "--teacher", teacher, "--out", str(k),
          "--epochs", "1", "--keep", "5", "--refit-images", "32", *common])
    assert load_model(k / "model.pt").forms == ("bm15",) * 5 + ("classical",)
    # a 2-branch head trained alone on that fixed BM stack, with an EMA of its weights
    h = tmp_path / "head"
    main(["--method", "finetune", "--init", str(k / "model.pt"), "--teacher", teacher, "--out",
          str(h), "--epochs", "1", "--last-form", "bm4", "--train-layers", "5", "--ema", "0.9",
          "--kd-temp", "4", "--beta", "0", *common])
    before, after = load_model(k / "model.pt"), load_model(h / "model.pt")
    assert after.forms == ("bm15",) * 5 + ("bm4",)
    for i in range(5):
        assert torch.equal(before.layers[i].weight, after.layers[i].weight)
        assert torch.equal(before.layers[i].bias, after.layers[i].bias)
    assert not torch.equal(before.layers[5].weight, after.layers[5].weight)


def _cached_against_recomputed(tmp_path: Path, capsys, argv: list[str]) -> dict[str, str]:
    """Run ``model.train argv`` twice from one tiny teacher, the frozen layers' outputs cached
    and recomputed every batch (``--cache-limit-gb 0``); both must end with the same
    accuracies and weights. Returns the two logs."""
    from model.train import load_model, main

    common = ["--train-limit", "192", "--test-limit", "96", "--no-progress", "--batch-size", "64"]
    t = tmp_path / "cls"
    main(["--method", "classical", "--out", str(t), "--epochs", "1", *common])
    runs, logs = {}, {}
    for name, limit in (("cached", "3"), ("recomputed", "0")):
        capsys.readouterr()
        runs[name] = main([*argv, "--teacher", str(t / "model.pt"), "--out", str(tmp_path / name),
                           "--cache-limit-gb", limit, *common])
        logs[name] = capsys.readouterr().out
    assert runs["cached"]["per_layer_accuracy"] == runs["recomputed"]["per_layer_accuracy"]
    a, b = (load_model(tmp_path / n / "model.pt").state_dict() for n in runs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    return logs


def test_layerwise_freeze_with_cached_inputs_matches_recomputing(
    tmp_path: Path, mnist_dir, capsys
):
    """Layer-wise conversion with freezing computes the frozen layers' outputs once per stage;
    the result is the run that recomputes them every batch."""
    logs = _cached_against_recomputed(tmp_path, capsys, [
        "--method", "layerwise_freeze", "--epochs", "1", "--form", "bm4", "--op", "lse",
        "--alpha", "1", "--alpha-end", "8", "--refit-images", "32"])
    assert "layer 4: cached inputs (192, 16, 20, 20)" in logs["cached"]
    assert "cached inputs" not in logs["recomputed"]


def test_lwkd_stage_joint_with_cached_inputs_matches_recomputing(tmp_path: Path, mnist_dir,
                                                                  capsys):
    """``lwkd --stage-joint 1``: each stage also trains the layer before it, fed from the
    inputs cached for that layer (built on the previous stage's cache); the result is the run
    that recomputes every input."""
    from model.train import load_model

    logs = _cached_against_recomputed(tmp_path, capsys, [
        "--method", "lwkd", "--layer-epochs", "1", "--refit-images", "64", "--keep", "5",
        "--stage-joint", "1"])
    assert "layer 3: cached student inputs (192, 16, 22, 22)" in logs["cached"]
    assert "cached student inputs" not in logs["recomputed"]
    # conv1 trained in conv2's stage: it moved after its own
    before = load_model(tmp_path / "cached" / "after_layer0.pt").layers[0].weight
    assert not torch.equal(load_model(tmp_path / "cached" / "model.pt").layers[0].weight, before)


def _stop_after_checkpoint(monkeypatch, args, stop_at) -> None:
    """Run ``python -m model.train ARGS`` and stop it right after the checkpoint for which
    ``stop_at(state, n)`` holds (``n``: the checkpoints written so far), as a killed run would."""
    from model import train

    class Stop(Exception):
        pass

    save, calls = train.Run.save_ckpt, []

    def save_then_stop(self, state):
        save(self, state)
        calls.append(state)
        if stop_at(state, len(calls)):
            raise Stop

    monkeypatch.setattr(train.Run, "save_ckpt", save_then_stop)
    with pytest.raises(Stop):
        train.main(args)
    monkeypatch.setattr(train.Run, "save_ckpt", save)


def _resumed_like_whole(tmp_path: Path, monkeypatch, capsys, common: list, stop):
    """Train ``common`` once whole and once stopped at the checkpoint ``stop`` picks, then
    resumed; check both end with the same weights. Returns the resumed run's result, the
    whole run's ``result.json`` and the resumed run's output."""
    from model.train import load_model, main

    main(["--out", str(tmp_path / "whole"), *common])
    _stop_after_checkpoint(monkeypatch, ["--out", str(tmp_path / "cut"), *common], stop)
    capsys.readouterr()
    res = main(["--out", str(tmp_path / "cut"), *common])
    out = capsys.readouterr().out
    a, b = (load_model(tmp_path / n / "model.pt").state_dict() for n in ("whole", "cut"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    return res, json.loads((tmp_path / "whole" / "result.json").read_text()), out


def test_interrupted_run_resumes_to_the_same_weights(
    tmp_path: Path, mnist_dir, monkeypatch, capsys
):
    """A run stopped after its first epoch's checkpoint and started again with the same command
    ends with the weights of the run that was never stopped, and counts both segments' time."""
    from model.train import load_model, main

    common = ["--train-limit", "256", "--test-limit", "64", "--no-progress", "--batch-size", "64",
              "--method", "classical", "--epochs", "2"]
    main(["--out", str(tmp_path / "whole"), *common])
    _stop_after_checkpoint(monkeypatch, ["--out", str(tmp_path / "cut"), *common],
                           lambda state, n: True)
    assert not (tmp_path / "cut" / "result.json").exists()
    capsys.readouterr()
    res = main(["--out", str(tmp_path / "cut"), *common])
    assert "resuming classical at epoch 1" in capsys.readouterr().out
    a, b = (load_model(tmp_path / n / "model.pt").state_dict() for n in ("whole", "cut"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    saved = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert len(saved["segments"]) == 2 and all(s["wall_s"] > 0 for s in saved["segments"])
    assert saved["wall_s"] == pytest.approx(sum(s["wall_s"] for s in saved["segments"]), abs=0.2)
    assert res["accuracy"] == saved["accuracy"]


def test_layerwise_stopped_inside_a_stage_resumes_to_the_same_weights(
    tmp_path: Path, mnist_dir, monkeypatch, capsys
):
    """Layer-wise conversion checkpoints each epoch of a stage; a run stopped after the first
    epoch of the second stage ends like the run that was never stopped."""
    from model.train import load_model, main

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    common = ["--method", "layerwise", "--teacher", str(tmp_path / "t" / "model.pt"),
              "--epochs", "2", "--form", "bm4", "--op", "lse", "--alpha", "1",
              "--alpha-end", "8", "--refit-images", "32", *small]
    main(["--out", str(tmp_path / "whole"), *common])

    def third(state, n):  # stage 0: epoch 1, stage end; stage 1: epoch 1
        if n == 3:
            assert state["layers_done"] == 1 and state["stage_epoch"] == 1
        return n == 3

    _stop_after_checkpoint(monkeypatch, ["--out", str(tmp_path / "cut"), *common], third)
    capsys.readouterr()
    res = main(["--out", str(tmp_path / "cut"), *common])
    assert "resuming layerwise after 1 layers, 1 epoch(s) into the next" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert res["per_layer_accuracy"] == whole["per_layer_accuracy"]
    a, b = (load_model(tmp_path / n / "model.pt").state_dict() for n in ("whole", "cut"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_two_stage_stopped_in_stage_2_resumes_there(tmp_path: Path, mnist_dir, monkeypatch,
                                                    capsys):
    """A two-stage run stopped after stage 2's first epoch resumes in stage 2 (stage 1 is not
    trained again) and ends like the run that was never stopped."""
    from model.train import main

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    common = ["--method", "two_stage", "--first-method", "kd", "--teacher",
              str(tmp_path / "t" / "model.pt"), "--epochs", "2", "--alpha-end", "8",
              "--refit-images", "32", *small]
    res, whole, out = _resumed_like_whole(tmp_path, monkeypatch, capsys, common,
                                          lambda state, n: state["tag"] == "stage2")
    assert "stage 1 done" in out and "resuming stage2 at epoch 1" in out
    assert "stage1 epoch" not in out
    assert res["accuracy_lse"] == whole["accuracy_lse"]
    assert res["accuracy_lse_max"] == whole["accuracy_lse_max"]
    # stage 1's frozen alphas (annealed to 8 here), kept through the resume
    assert whole["alphas_lse"] == res["alphas_lse"] == [8.0] * 6


@pytest.mark.parametrize("switch", ["none", "teacher"])
def test_two_stage_switch_keeps_the_weights_unless_refitted(tmp_path: Path, mnist_dir,
                                                            monkeypatch, switch):
    """The switch of the trained LSE network to the hard max keeps stage 1's weights
    (``--switch-refit none``, the paper's); ``teacher`` refits them to the teacher. A run
    stopped at stage 1's last checkpoint resumes into the switch."""
    from model.train import main

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    out = tmp_path / "c"
    common = ["--out", str(out), "--method", "two_stage", "--first-method", "kd", "--teacher",
              str(tmp_path / "t" / "model.pt"), "--epochs", "1", "--alpha-end", "8", "--keep",
              "5", "--refit-images", "32", "--switch-refit", switch, *small]
    _stop_after_checkpoint(monkeypatch, common, lambda state, n: state["tag"] == "stage1")
    stage1 = torch.load(out / "ckpt.pt", weights_only=False)["net"]
    res = main(common)
    assert 0 <= res["accuracy_lse"] <= 1  # measured although stage 1 had no epoch left
    switched = torch.load(out / "stage1.pt", weights_only=False)["state_dict"]
    weights = [k for k in stage1 if not k.endswith("alpha_param")]  # the op: LSE, then max
    same = all(torch.equal(stage1[k], switched[k]) for k in weights)
    assert same == (switch == "none")
    assert 0 <= res["accuracy_lse_max"] <= 1


@pytest.mark.parametrize("loss", ["kd", "logits"])
def test_two_stage_stage2_loss(tmp_path: Path, mnist_dir, monkeypatch, loss):
    """``--stage2-loss``: the hard-max stage trains on section 4.1's KD with every layer's MSE
    (``kd``), or on the labels and the teacher's logits only (``logits``), as lwkd's final
    epochs do; stage 1 keeps its own loss either way."""
    from model.train import main, methods

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    seen = []
    real = methods.kd_loss_fn

    def spy(cfg, teacher, layers=True):
        seen.append((cfg.op, layers))
        return real(cfg, teacher, layers)

    monkeypatch.setattr(methods, "kd_loss_fn", spy)
    res = main(["--out", str(tmp_path / "c"), "--method", "two_stage", "--first-method", "kd",
                "--teacher", str(tmp_path / "t" / "model.pt"), "--epochs", "1", "--alpha-end",
                "8", "--keep", "5", "--refit-images", "32", "--stage2-loss", loss, *small])
    assert seen == [("lse", True), ("max", loss == "kd")]
    assert 0 <= res["accuracy"] <= 1


@pytest.mark.parametrize("target", ["teacher", "self"])
def test_layerwise_refit_target(tmp_path: Path, mnist_dir, monkeypatch, target):
    """``--refit-target self``: each converted layer is refitted to the layer it replaces, in
    the network as the earlier steps left it (its converted layers included); ``teacher``: to
    the classical teacher's layer, which the first step's fine-tune has moved away from."""
    from model.train import main, methods

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    seen = []
    real = methods.refit_to

    def spy(cfg, net, i, ref, x, log=None):
        # the reference's layer i against the converted layer's weights, before the refit
        same = torch.equal(ref.layers[i].weight, net.layers[i].weight)
        seen.append((i, ref.forms[: i + 1], same))
        return real(cfg, net, i, ref, x, log)

    monkeypatch.setattr(methods, "refit_to", spy)
    main(["--out", str(tmp_path / "c"), "--method", "layerwise", "--form", "bm4", "--op", "max",
          "--teacher", str(tmp_path / "t" / "model.pt"), "--epochs", "1", "--keep", "2,3,4,5",
          "--refit-images", "32", "--refit-target", target, *small])
    assert [i for i, _, _ in seen] == [0, 1]
    if target == "self":  # the replaced layer, after the first step converted layer 0
        assert seen[1][1:] == (("bm4", "classical"), True)
    else:
        assert seen[1][1:] == (("classical", "classical"), False)


def test_lwkd_stopped_in_its_final_epochs_resumes_there(tmp_path: Path, mnist_dir, monkeypatch,
                                                        capsys):
    """A layer-wise KD run stopped inside ``--final-epochs`` resumes there: the layer stages are
    not trained again (they were, from scratch, before: the final checkpoint's tag was not the
    stages'), it reports the stages' accuracies, and it ends like the run never stopped."""
    from model.train import main

    small = ["--train-limit", "128", "--test-limit", "64", "--no-progress", "--batch-size", "64"]
    main(["--method", "classical", "--out", str(tmp_path / "t"), "--epochs", "1", *small])
    common = ["--method", "lwkd", "--op", "max", "--teacher", str(tmp_path / "t" / "model.pt"),
              "--keep", "3,4,5", "--layer-epochs", "1,1", "--final-epochs", "2",
              "--refit-images", "32", *small]
    res, whole, out = _resumed_like_whole(tmp_path, monkeypatch, capsys, common,
                                          lambda state, n: state.get("tag") == "final")
    assert "resuming after the layer-wise stages" in out and "resuming final at epoch 1" in out
    assert "layer 0 epoch" not in out
    assert res["per_layer_accuracy"] == whole["per_layer_accuracy"]
    assert len(whole["per_layer_accuracy"]) == 3
    assert res["accuracy"] == whole["accuracy"]


def test_kd_loss_ignores_a_shift_common_to_all_logits():
    """The 1.5-BM classifier's window-sum term moves every logit alike; KD must not see it."""
    from model.train import TrainConfig, kd_loss_fn

    torch.manual_seed(0)
    teacher = create_net("lenet").eval()
    student = create_net("lenet").eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    f = kd_loss_fn(TrainConfig(), teacher)
    base = float(f(student, x, y, None).detach())
    with torch.no_grad():
        student.layers[5].bias.add_(123.0)  # every logit up by the same amount
    assert float(f(student, x, y, None).detach()) == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize("op", ["lse", "max"])
def test_kd_step_on_a_converted_layer_lowers_the_loss(op):
    """The authors' KD (per-layer normalised MSE, soft term at T = 4, alpha learned from 1):
    Adam steps on a student with one converted 1.5-BM convolution lower the loss on a fixed
    batch, and every term stays finite and comparable (none is orders above the CE)."""
    import copy

    from model.train import TrainConfig, convert_layer, kd_loss_fn, refit_to

    torch.manual_seed(0)
    teacher = create_net("lenet").eval()
    cfg = TrainConfig(method="kd", op=op, learn_alpha=op != "max", kd_norm=True, kd_temp=4.0,
                      keep=(5,))
    student = copy.deepcopy(teacher)
    layer = convert_layer(cfg, student, 2)
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():  # away from the converted weights (exact for LSE at alpha = 1)
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    refit_to(cfg, student, 2, teacher, torch.rand(64, 1, 28, 28))  # as the methods convert
    with torch.no_grad():
        y = teacher(x).argmax(1)
    f = kd_loss_fn(cfg, teacher)
    first = float(f(student, x, y, None).detach())
    assert first == first and first < 50  # normalised: a few units, not hundreds
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(5):
        loss = f(student, x, y, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(f(student, x, y, None).detach())
    assert torch.isfinite(torch.tensor(last)) and last < first


def test_kd_pre_layers_reach_a_channel_the_relu_silences():
    """``--kd-layers pre``: a convolution channel below zero on every input (as the
    all-at-once conversion left conv5's) gets a gradient from section 4.1's loss; compared
    after the ReLU (``post``) it gets none. The logits are the same either way."""
    import copy

    from model.train import TrainConfig, kd_loss_fn

    torch.manual_seed(0)
    teacher = create_net("lenet").eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.layers[2].bias[0] = -1e3  # channel 0 of conv3: never above zero
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    post, pre = student.features(x), student.features(x, pre=True)
    assert torch.equal(post[-1], pre[-1]) and torch.equal(post[2], pre[2].relu())
    assert bool((pre[2][:, 0] < 0).all())
    grads = {}
    for where in ("post", "pre"):
        cfg = TrainConfig(method="kd", kd_norm=True, kd_temp=4.0, kd_layers=where)
        student.zero_grad()
        kd_loss_fn(cfg, teacher)(student, x, y, None).backward()
        grads[where] = student.layers[2].weight.grad[0].abs().sum()
    assert float(grads["post"]) == 0.0
    assert float(grads["pre"]) > 0.0
    with pytest.raises(ValueError, match="kd_layers"):
        TrainConfig(method="kd", kd_layers="mid")


def test_partial_kd_skips_where_both_are_silenced():
    """``--kd-layers partial``: no loss and no gradient where the student is at or below a
    teacher value that is at or below zero; elsewhere the MSE before the ReLU."""
    from model.train.losses import partial_pre

    t = torch.tensor([-1.0, -1.0, -1.0, 0.5, 0.5, 0.0])
    s = torch.tensor([-3.0, -1.0, -0.2, -2.0, 1.0, 0.0], requires_grad=True)
    p = partial_pre(s, t)
    ((p - t) ** 2).sum().backward()
    # both silenced (student below or at the teacher's non-positive value): skipped
    assert p[:2].tolist() == [-1.0, -1.0] and s.grad[:2].tolist() == [0.0, 0.0]
    # the student above a negative teacher value, or below a positive one: compared
    assert s.grad[2:5].tolist() == pytest.approx([1.6, -5.0, 1.0])
    assert s.grad[5] == 0.0  # equal


def test_direct_and_kd_keep_the_classifier_classical(tmp_path: Path, mnist_dir, capsys):
    """``--keep 5`` (the authors' protocol) leaves the classifier classical in every method."""
    from model.train import main

    common = ["--data-dir", str(mnist_dir.parent), "--train-limit", "64", "--test-limit", "32",
              "--epochs", "1", "--no-progress", "--keep", "5"]
    res = main(["--method", "direct", "--out", str(tmp_path / "d"), "--op", "lse",
                "--learn-alpha", *common])
    assert res["forms"] == ["bm15"] * 5 + ["classical"]
    assert len(res["alphas"]) == 5
    out = tmp_path / "d4"
    res = main(["--method", "direct", "--out", str(out), "--form", "bm4", "--op", "smorph",
                "--learn-alpha", "--direct-init", "spread", *common])
    assert res["forms"] == ["bm4"] * 5 + ["classical"]
    assert capsys.readouterr().out.count(": gain ") == 5


@pytest.mark.parametrize("form", ["bm15", "bm4"])
def test_channel_head_init_pools_one_channel_per_class(form):
    """``--head-init channel``: under the hard max, class j's branch is the maximum of feature
    channel j over every position (and under LSE at alpha = 1 its sum)."""
    from model.maxops import MaxOp
    from model.train import channel_head_init

    net = create_net("lenet")
    layer = net.convert_layer(5, form, op=MaxOp("max"))
    channel_head_init(layer, 16)
    feats = torch.rand(3, 16, 18, 18)
    feats[:, :, 5:, :] = 0  # some silent positions, as after a ReLU
    flat = feats.flatten(1)
    if form == "bm15":
        y, e, _ = layer(flat, return_parts=True)
    else:
        e = layer(flat) - layer.bias
    want = feats.amax((2, 3))[:, :10]
    assert torch.allclose(e, want, rtol=1e-3, atol=1e-4)
    layer.set_op(MaxOp("lse", alpha=1.0))
    e1 = layer(flat, return_parts=True)[1] if form == "bm15" else layer(flat) - layer.bias
    own = feats.sum((2, 3))[:, :10]
    if form == "bm15":  # the other channels at the floor weight
        own = own + layer.w_floor * (flat.sum(1, keepdim=True) - own)
    assert torch.allclose(e1, own, rtol=1e-4)
    with pytest.raises(ValueError, match="at least 10 feature channels"):
        channel_head_init(layer, 4)


def test_weight_ema_averages_and_swaps_back():
    """``--ema``: the average moves by ``1 - decay`` toward each new weight; evaluating with it
    swapped in leaves the trained weights as they were."""
    from model.train import WeightEMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = WeightEMA([p], 0.75)
    with torch.no_grad():
        p.fill_(4.0)
    ema.update()  # 0.75 * 0 + 0.25 * 4
    assert torch.allclose(ema.avg[0], torch.full((3,), 1.0))
    with ema.swapped():
        assert torch.equal(p.detach(), torch.full((3,), 1.0))
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    state = ema.state_dict()
    ema.update()
    ema.load_state_dict(state)  # what a resumed run restores
    assert torch.allclose(ema.avg[0], torch.full((3,), 1.0))
    ema.copy_to_params()
    assert torch.equal(p.detach(), torch.full((3,), 1.0))
    with pytest.raises(ValueError):
        WeightEMA([p], 1.0)


def test_recipe_smoke_writes_every_export_and_resumes(tmp_path: Path, mnist_dir):
    """``model.recipe`` end to end on a few images: teacher, layer-wise KD of the five
    convolutions, the lns export and the MAC twin with their accuracies; a second call resumes
    from every stage's result instead of training again."""
    from model import recipe

    out = tmp_path / "recipe"
    argv = ["--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "256",
            "--test-limit", "64", "--teacher-epochs", "1", "--layer-epochs", "1",
            "--final-epochs", "0", "--ft-epochs", "1", "--threads", "1"]
    assert recipe.main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["bm_method"] == "lwkd" and len(s["bm_per_stage_accuracy"]) == 5
    # the shipped recipe: each stage trains the layer before too, then an end-to-end fine-tune
    cfg = json.loads((out / "bm" / "config.json").read_text())
    assert cfg["stage_joint"] == 1 and cfg["last_joint"] == 2
    assert 0.0 <= s["ft_float_accuracy"] <= 1.0 and (out / "ft" / "model.pt").exists()
    assert "fine-tune" in s["stage_wall_s"]
    assert set(s["exports"]) == {"lns", "mac"}
    for e in s["exports"].values():
        assert Path(e["export"]).exists() and e["images"] == 64
        assert 0.0 <= e["int_accuracy"] <= 1.0 and 0.0 <= e["agreement"] <= 1.0
    assert s["exports"]["lns"]["head"] == "lns"
    mtime = (out / "bm" / "model.pt").stat().st_mtime
    assert recipe.main(argv) == 0
    assert (out / "bm" / "model.pt").stat().st_mtime == mtime


@pytest.mark.parametrize(("rule", "opposed", "kept"), [
    ("floor", 3, False), ("spread", 3, True), ("spread", 1, True),
    ("auto", 3, True),  # most channels unfit: the layer would be flattened, so spread
    ("auto", 1, False),  # one channel of three unfit: floor
])
def test_refit_gain_rule_for_a_branch_the_target_opposes(rule, opposed, kept):
    """A converted layer whose branch the teacher's pre-activation opposes (least-squares gain
    <= 0) in its first ``opposed`` channels: ``floor`` flattens them (gain 1e-3, weights at the
    floor), ``spread`` keeps their branch at the target's spread, so the channel's output
    varies as much as the target does; ``auto`` is ``spread`` only where most channels oppose."""
    from model.layers import convert
    from model.maxops import MaxOp
    from model.train import TrainConfig
    from model.train.convert import refit_layer

    torch.manual_seed(0)
    layer = convert(torch.nn.Linear(12, 3), "bm15", op=MaxOp("max"))
    h = torch.rand(512, 12)
    with torch.no_grad():
        _, e, _ = layer(h, return_parts=True)
    sign = torch.tensor([-3.0] * opposed + [2.0] * (3 - opposed))
    target = sign * e + 0.01 * torch.randn_like(e)
    refit_layer(TrainConfig(refit_gain=rule), layer, h, target)
    with torch.no_grad():
        _, e2, _ = layer(h, return_parts=True)
    ratio = e2.std(0) / target.std(0)
    # the channels the target follows are fitted in every rule
    assert torch.allclose(ratio[opposed:], torch.ones(3 - opposed), rtol=0.05)
    if kept:
        assert torch.allclose(ratio[:opposed], torch.ones(opposed), rtol=0.05)
    else:
        assert float(ratio[:opposed].max()) < 0.01  # nearly constant: no gradient reaches it
    with pytest.raises(ValueError, match="refit_gain"):
        TrainConfig(refit_gain="bogus")


@pytest.mark.parametrize("op", ["smorph", "lmorph"])
def test_direct_init_spread_scales_each_layer_to_the_classical_init(op):
    """``--direct-init spread``: every 4-BM layer's output has its classical init's spread on the
    network's own inputs, and the first layer's gradient is no longer vanishing (a plain
    S-morph / L-morph stack averages where a convolution sums: ~1/n of the gradient per layer)."""
    import copy

    import torch.nn.functional as F

    from model.maxops import MaxOp
    from model.train.convert import scale_to_init

    torch.manual_seed(0)
    plain = create_net("lenet")
    ref = copy.deepcopy(plain)
    for i in range(5):
        plain.convert_layer(i, "bm4", op=MaxOp(op, alpha=1.0))
    scaled = copy.deepcopy(plain)
    x = torch.rand(32, 1, 28, 28)
    scale_to_init(scaled, ref, x)
    for i in range(5):
        h = scaled.run(x, 0, i)
        layer = scaled.layers[i]
        own = scaled.run_layer(i, h, pre=True) - layer._bias_shape(layer.bias)
        torch.testing.assert_close(own.std(), ref.run_layer(i, h, pre=True).std(), rtol=1e-4,
                                   atol=0)
    y = torch.randint(0, 10, (32,))
    grads = []
    for net in (plain, scaled):
        F.cross_entropy(net(x), y).backward()
        grads.append(float(net.layers[0].weight.grad.norm()))
    assert grads[1] > 1e3 * grads[0], grads


def test_direct_init_spread_is_for_bm4():
    from model.train.config import TrainConfig

    with pytest.raises(ValueError, match="bm4"):
        TrainConfig(method="direct", form="bm15", direct_init="spread")
    with pytest.raises(ValueError, match="direct_init"):
        TrainConfig(method="direct", form="bm4", direct_init="lsuv")
