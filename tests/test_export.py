"""The weights export: round trip, and a clear ExportError for every kind of damage."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from model.export import (
    SCHEMA_VERSION,
    ExportError,
    NetworkExport,
    compute_checksum,
    load_export,
    save_export,
)
from model.params import PRESETS, LayerSpec
from model.reference import ref_network

LAYERS = (
    LayerSpec("conv", 1, 4, 3, c_shift=2, out_shift=7),
    LayerSpec("conv", 4, 3, 3, c_shift=1, out_shift=6, pool=2),
    LayerSpec("linear", 3 * 2 * 2, 5, relu=False, c_shift=3, out_shift=2),
)


def make_export(arith: str = "bm", seed: int = 0) -> NetworkExport:
    rng = np.random.default_rng(seed)
    p = PRESETS["bm8" if arith == "bm" else "mac8"]
    layers = tuple(
        LAYERS if arith == "bm" else (LayerSpec(**{**s.to_dict(), "c_shift": 0}) for s in LAYERS)
    )
    tensors = []
    for s in layers:
        if arith == "bm":
            w = rng.integers(p.w_log_min, p.w_log_max + 1, s.weight_shape)
        else:
            w = rng.integers(p.w_min, p.w_max + 1, s.weight_shape)
        tensors.append({"w": w, "bias": rng.integers(-1000, 1000, s.out_ch)})
    return NetworkExport(
        preset="bm8" if arith == "bm" else "mac8",
        params=p,
        layers=layers,
        tensors=tuple(tensors),
        input_shape=(1, 8, 8),
        metadata={"float_accuracy": 0.5, "note": "test"},
    )


@pytest.fixture(params=["bm", "mac"])
def saved(request, tmp_path):
    exp = make_export(request.param)
    path = tmp_path / f"net_{request.param}.npz"
    return path, save_export(path, exp)


def rewrite(src, dst, edit):
    """Copy an export zip, passing the member dict through ``edit``."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


def test_round_trip(saved):
    path, written = saved
    got = load_export(path)
    assert got.checksum == written.checksum and len(got.checksum) == 64
    assert got.params == written.params
    assert got.layers == written.layers
    assert got.preset == written.preset
    assert got.metadata == written.metadata
    assert got.input_shape == (1, 8, 8)
    assert got.schema_version == SCHEMA_VERSION
    for a, b in zip(got.tensors, written.tensors, strict=True):
        np.testing.assert_array_equal(a["w"], b["w"])
        np.testing.assert_array_equal(a["bias"], b["bias"])
    img = np.random.default_rng(1).integers(0, 256, (1, 8, 8))
    np.testing.assert_array_equal(
        ref_network(got.params, got.layers, got.tensors, img),
        ref_network(written.params, written.layers, written.tensors, img),
    )


def test_checksum_is_deterministic_and_content_bound(tmp_path):
    a = save_export(tmp_path / "a.npz", make_export("bm"))
    b = save_export(tmp_path / "b.npz", make_export("bm"))
    c = save_export(tmp_path / "c.npz", make_export("bm", seed=1))
    assert a.checksum == b.checksum != c.checksum
    assert a.checksum == compute_checksum(a.meta(), a.arrays())


def test_truncated(saved, tmp_path):
    path, _ = saved
    raw = path.read_bytes()
    for cut in (0, 10, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ExportError, match=r"cut\d+\.npz.*(truncated|corrupt)"):
            load_export(bad)


def test_edited_checksum(saved, tmp_path):
    path, written = saved
    bad = tmp_path / "edited.npz"

    def edit(arrays):
        s = bytearray(arrays["checksum"].tobytes())
        s[0] = ord("0") if s[0] != ord("0") else ord("1")
        arrays["checksum"] = np.frombuffer(bytes(s), dtype=np.uint8)

    rejects(path, bad, edit, "edited.npz.*checksum mismatch")


def test_edited_tensor_fails_checksum(saved, tmp_path):
    path, _ = saved
    bad = tmp_path / "tensor.npz"

    def edit(arrays):
        arrays["layer0.bias"] = arrays["layer0.bias"] + 1

    rejects(path, bad, edit, "checksum mismatch")


def rejects(path, bad, edit, match: str) -> None:
    """``path`` rewritten through ``edit`` into ``bad`` fails to load with ``match``."""
    rewrite(path, bad, edit)
    with pytest.raises(ExportError, match=match):
        load_export(bad)


def edit_meta(path, dst, change, *, fix_checksum: bool):
    def edit(arrays):
        meta = json.loads(arrays["meta"].tobytes())
        change(meta)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        if fix_checksum:
            rest = {k: v for k, v in arrays.items() if k not in ("meta", "checksum")}
            arrays["checksum"] = np.frombuffer(
                compute_checksum(meta, rest).encode(), dtype=np.uint8
            )

    rewrite(path, dst, edit)


def test_mismatched_shape(saved, tmp_path):
    """A self-consistent file (valid checksum) whose tensor disagrees with its LayerSpec."""
    path, _ = saved
    bad = tmp_path / "shape.npz"

    def edit(arrays):
        arrays["layer1.w"] = arrays["layer1.w"][:, :2]
        meta = json.loads(arrays["meta"].tobytes())
        rest = {k: v for k, v in arrays.items() if k not in ("meta", "checksum")}
        arrays["checksum"] = np.frombuffer(compute_checksum(meta, rest).encode(), np.uint8)

    rejects(path, bad, edit, r"shape.npz.*layer 1 .*w has shape \(3, 2, 3, 3\)")


def test_broken_layer_chain(saved, tmp_path):
    path, _ = saved
    bad = tmp_path / "chain.npz"
    edit_meta(path, bad, lambda m: m["input"].update(shape=[1, 10, 10]), fix_checksum=True)
    with pytest.raises(ExportError, match="layer 2: linear expects 12 inputs"):
        load_export(bad)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("w", 10**4, "outside"),
        ("bias", 2**40, "bias outside"),
    ],
)
def test_value_out_of_range(tmp_path, field, value, msg):
    exp = make_export("bm")
    tensors = [dict(t) for t in exp.tensors]
    tensors[0][field] = tensors[0][field].copy()
    tensors[0][field].flat[0] = value
    bad = NetworkExport(**{**exp.__dict__, "tensors": tuple(tensors)})
    with pytest.raises(ExportError, match=f"refusing to write.*{msg}"):
        save_export(tmp_path / "x.npz", bad)
    # a file written around the writer's check is refused by the loader too
    path = tmp_path / "ok.npz"
    save_export(path, exp)

    def edit(arrays):
        arrays[f"layer0.{field}"] = np.asarray(tensors[0][field], arrays[f"layer0.{field}"].dtype)
        meta = json.loads(arrays["meta"].tobytes())
        rest = {k: v for k, v in arrays.items() if k not in ("meta", "checksum")}
        arrays["checksum"] = np.frombuffer(compute_checksum(meta, rest).encode(), np.uint8)

    rewrite(path, tmp_path / "range.npz", edit)
    with pytest.raises(ExportError, match=f"range.npz.*{msg}"):
        load_export(tmp_path / "range.npz")


def test_c_shift_limit(tmp_path):
    exp = make_export("bm")
    layers = list(exp.layers)
    layers[0] = LayerSpec(**{**layers[0].to_dict(), "c_shift": exp.params.max_c_shift + 1})
    with pytest.raises(ExportError, match="c_shift .* > max_c_shift"):
        save_export(tmp_path / "x.npz", NetworkExport(**{**exp.__dict__, "layers": tuple(layers)}))


def test_mac_overflow_refused(tmp_path):
    exp = make_export("mac")
    p = exp.params
    tensors = [dict(t) for t in exp.tensors]
    tensors[2]["bias"] = np.full(5, (1 << (p.bias_bits - 1)) - 1)
    with pytest.raises(ExportError, match="accumulator can overflow"):
        save_export(
            tmp_path / "x.npz", NetworkExport(**{**exp.__dict__, "tensors": tuple(tensors)})
        )


def test_not_an_export(tmp_path):
    bad = tmp_path / "plain.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ExportError, match="missing member 'meta'"):
        load_export(bad)
    with pytest.raises(ExportError, match="cannot read"):
        load_export(tmp_path / "missing.npz")


def test_no_pickle(saved):
    """Loading must never need pickle: every member is a plain array."""
    path, _ = saved
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
        names = sorted(z.namelist())
    assert "meta.npy" in names and "checksum.npy" in names
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_atomic_write_leaves_no_temp(tmp_path):
    save_export(tmp_path / "a.npz", make_export("bm"))
    save_export(tmp_path / "a.npz", make_export("bm", seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    first = save_export(path, make_export("bm"))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_export(path, make_export("bm", seed=5))
    assert load_export(path).checksum == first.checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_version_1_files_still_load_as_chains(saved, tmp_path):
    """Version 1 (before the ResNet shared the container) had no ``graph``: it is a chain, and
    its checksum covers the meta as it was written."""
    path, written = saved
    old = tmp_path / "v1.npz"

    def to_v1(m):
        m.pop("graph")
        m["schema_version"] = 1

    edit_meta(path, old, to_v1, fix_checksum=True)
    got = load_export(old)
    assert got.schema_version == 1 and "graph" not in got.meta()
    assert compute_checksum(got.meta(), got.arrays()) == got.checksum
    for a, b in zip(got.tensors, written.tensors, strict=True):
        np.testing.assert_array_equal(a["w"], b["w"])
    # a re-save writes the current version with the graph named
    again = save_export(tmp_path / "v2.npz", got)
    assert again.schema_version == SCHEMA_VERSION and again.meta()["graph"] == "chain"


@pytest.mark.parametrize(
    "key, value, message",
    [(("schema_version", v, "schema version .* not supported")) for v in (0, SCHEMA_VERSION + 1,
                                                                          "1", None, True)]
    + [
        ("schema", "other", "schema is 'other'"),
        ("graph", "transformer", "this is an export of 'transformer'"),  # an unknown network
    ],
)
def test_wrong_schema_version_name_or_graph(saved, tmp_path, key, value, message):
    edit_meta(saved[0], tmp_path / "meta.npz", lambda m: m.update({key: value}), fix_checksum=True)
    bad = tmp_path / "meta.npz"
    with pytest.raises(ExportError, match=f"meta.npz: {message}"):
        load_export(bad)
