"""The weights export: one versioned ``.npz`` file per integer network, read by ``hw/``.

NumPy and the standard library only (no torch): the hardware generators import this module.

File format (schema ``bm-netexport``, version :data:`SCHEMA_VERSION`)
--------------------------------------------------------------------
One container for every integer network: an uncompressed ``.npz`` (a zip of ``.npy`` arrays,
loaded with ``allow_pickle=False``) holding ``meta`` (JSON), ``checksum`` and the network's
arrays. ``meta["graph"]`` says which network walker reads it:

- ``"chain"`` (this module, :class:`NetworkExport`): a chain of conv and linear layers, the
  networks the accelerator builds (the LeNets). Version 1 files carry no ``graph`` key and are
  chains.
- ``"resnet22"`` (:mod:`model.reference.resnet`): the integer ResNet-22, read by
  :func:`model.reference.resnet.load_resnet_export` and by nothing in ``hw/``.

:func:`read_container` and :func:`write_container` are the parts every graph shares: the zip,
the schema name and version, the checksum, the atomic write, and :class:`ExportError`. A chain
export holds:

``meta``
    The UTF-8 bytes (``uint8`` array) of a JSON object with the keys ``schema`` (always
    ``"bm-netexport"``), ``schema_version``, ``graph`` (``"chain"``), ``preset`` (a name,
    normally a key of :data:`model.params.PRESETS`), ``params`` (``to_dict()`` of the
    :class:`~model.params.BMParams` or :class:`~model.params.MACParams`), ``layers`` (the
    :class:`~model.params.LayerSpec` list as dicts), ``input`` (``shape`` ``[C, H, W]`` and
    ``pixel_shift``: an image's code is ``uint8 pixel >> pixel_shift``) and ``metadata`` (free
    JSON: float accuracy, activation scales, provenance).
``layer<i>.w``
    Layer ``i``'s weights, shape ``LayerSpec.weight_shape``: signed log codes ``Lw`` for BM,
    signed ``w_bits`` integers for MAC. Stored as ``int32``.
``layer<i>.sign`` (only for a layer whose ``neuron`` is ``lns`` or ``bm2``, the classifier heads)
    One sign bit per weight (0: positive, 1: negative), shape ``LayerSpec.weight_shape``, stored
    as ``int8``. The head an export carries is its last layer's ``neuron``
    (:attr:`NetworkExport.head`).
``layer<i>.bias``
    Layer ``i``'s integer bias, shape ``(out_ch,)``, in accumulator units. Stored as ``int64``.
``aux.<name>`` (optional)
    Auxiliary arrays that the datapath does not use, e.g. ``aux.float_test_pred``: the float
    model's predicted class for every test image, so that top-1 agreement can be measured
    without torch or the checkpoint.
``checksum``
    The hex SHA-256 (as ``uint8`` ASCII bytes) of :func:`canonical_bytes`: the canonical JSON of
    ``meta`` (sorted keys, no spaces), then for every tensor in name order its name, dtype,
    shape and little-endian C-order bytes.

:func:`load_export` checks, in this order, that the file is a readable zip with the expected
members, the schema name and version, the checksum, the params, the layer chain (shapes follow
from ``input.shape``), every tensor's shape against its ``LayerSpec``, and every value against
the widths: ``Lw`` within ``w_log_bits``, MAC weights within ``w_bits``, biases within
``bias_bits``, ``c_shift <= max_c_shift`` (0 for MAC), ``out_shift`` below 63, and for MAC that
no accumulator can overflow ``acc_bits``. Any failure raises :class:`ExportError` naming the file
and what is wrong. :func:`save_export` writes a temporary file beside the target and renames it,
so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .params import BMParams, LayerSpec, MACParams, params_from_dict

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "GRAPHS",
    "read_container",
    "write_container",
    "ExportError",
    "NetworkExport",
    "canonical_bytes",
    "compute_checksum",
    "save_export",
    "load_export",
    "validate",
    "layer_shapes",
]

SCHEMA = "bm-netexport"
SCHEMA_VERSION = 2  # 2: ``meta["graph"]``; version 1 files (no graph) are chains
SUPPORTED_VERSIONS = (1, 2)
GRAPHS = ("chain", "resnet22")


class ExportError(ValueError):
    """An export file is unreadable, corrupt, of another schema, or inconsistent."""


@dataclass(frozen=True)
class NetworkExport:
    """An integer network as stored in an export file.

    ``tensors`` holds one dict per layer with ``"w"`` and ``"bias"`` integer arrays, the form
    that :func:`model.reference.ref_network` takes.
    """

    preset: str
    params: BMParams | MACParams
    layers: tuple[LayerSpec, ...]
    tensors: tuple[dict, ...]
    input_shape: tuple[int, int, int] = (1, 28, 28)
    pixel_shift: int = 0
    metadata: dict = field(default_factory=dict)
    aux: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    checksum: str = ""

    @property
    def arith(self) -> str:
        return "bm" if isinstance(self.params, BMParams) else "mac"

    @property
    def head(self) -> str:
        """The classifier's neuron: ``"bm15"``, ``"lns"`` or ``"bm2"`` (BM), ``"mac"`` (MAC)."""
        return self.layers[-1].neuron if self.arith == "bm" else "mac"

    def codes(self, images) -> np.ndarray:
        """uint8 images ``(N, H, W)`` or ``(N, C, H, W)`` -> input codes ``(N, C, H, W)``."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[:, None]
        return x.astype(np.int64) >> self.pixel_shift

    def meta(self) -> dict:
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            **({"graph": "chain"} if self.schema_version >= 2 else {}),
            "preset": self.preset,
            "params": self.params.to_dict(),
            "layers": [s.to_dict() for s in self.layers],
            "input": {"shape": list(self.input_shape), "pixel_shift": self.pixel_shift},
            "metadata": self.metadata,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, t in enumerate(self.tensors):
            out[f"layer{i}.w"] = np.ascontiguousarray(np.asarray(t["w"]), dtype=np.int32)
            out[f"layer{i}.bias"] = np.ascontiguousarray(np.asarray(t["bias"]), dtype=np.int64)
            if self.layers[i].signed_weights:
                out[f"layer{i}.sign"] = np.ascontiguousarray(np.asarray(t["sign"]), dtype=np.int8)
        for name, a in self.aux.items():
            out[f"aux.{name}"] = np.ascontiguousarray(np.asarray(a))
        return out


# -- canonical serialisation -------------------------------------------------------------------
def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def canonical_bytes(meta: dict, arrays: dict[str, np.ndarray]):
    """Yield the byte chunks that the checksum covers (see the module docstring)."""
    yield _canonical_json(meta)
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        head = {"name": name, "dtype": le.dtype.str, "shape": list(a.shape)}
        yield b"\0" + _canonical_json(head) + b"\0"
        yield np.ascontiguousarray(le).tobytes()


def compute_checksum(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for chunk in canonical_bytes(meta, arrays):
        h.update(chunk)
    return h.hexdigest()


# -- validation --------------------------------------------------------------------------------
def layer_shapes(layers, input_shape) -> list[tuple[int, ...]]:
    """Output shape of every layer for an input ``(C, H, W)``; raises ``ValueError`` on a break."""
    shape = tuple(int(v) for v in input_shape)
    out = []
    for i, spec in enumerate(layers):
        if spec.kind == "conv":
            if len(shape) != 3 or shape[0] != spec.in_ch:
                raise ValueError(f"layer {i}: conv expects {spec.in_ch} channels, not {shape}")
            c, h, w = shape
            ho, wo = h - spec.k + 1, w - spec.k + 1
            if ho < 1 or wo < 1:
                raise ValueError(f"layer {i}: input {h}x{w} is smaller than the kernel {spec.k}")
            shape = (spec.out_ch, ho // spec.pool, wo // spec.pool)
        else:
            n = int(np.prod(shape))
            if n != spec.in_ch:
                raise ValueError(f"layer {i}: linear expects {spec.in_ch} inputs, not {n} {shape}")
            if spec.pool != 1:
                raise ValueError(f"layer {i}: a linear layer cannot pool")
            shape = (spec.out_ch,)
        if i < len(layers) - 1 and not spec.relu:
            raise ValueError(f"layer {i}: only the last layer may output signed logits")
        out.append(shape)
    if layers and layers[-1].relu:
        raise ValueError("the last layer must output signed logits (relu=False)")
    return out


def _signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def validate(exp: NetworkExport) -> None:
    """Check shapes and value ranges of an export against its params; raises ``ValueError``."""
    p = exp.params
    if not isinstance(p, (BMParams, MACParams)):
        raise ValueError(f"params must be BMParams or MACParams, not {type(p).__name__}")
    if len(exp.layers) != len(exp.tensors) or not exp.layers:
        raise ValueError(f"{len(exp.layers)} layer specs but {len(exp.tensors)} tensor sets")
    if len(exp.input_shape) != 3:
        raise ValueError(f"input shape must be (C, H, W), not {exp.input_shape}")
    if not 0 <= exp.pixel_shift <= 8:
        raise ValueError(f"pixel_shift must be in 0..8, not {exp.pixel_shift}")
    if (255 >> exp.pixel_shift) > p.a_max:
        raise ValueError(f"pixel codes (255 >> {exp.pixel_shift}) exceed a_max {p.a_max}")
    layer_shapes(exp.layers, exp.input_shape)
    for name, a in exp.aux.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"aux name must be an identifier, not {name!r}")
        if np.asarray(a).dtype == object:
            raise ValueError(f"aux.{name} must be a plain numeric array")
    b_lo, b_hi = _signed_range(p.bias_bits)
    for i, (spec, t) in enumerate(zip(exp.layers, exp.tensors, strict=True)):
        w, b = np.asarray(t["w"]), np.asarray(t["bias"])
        where = f"layer {i} ({spec.kind} {spec.in_ch}->{spec.out_ch})"
        for name, a in (("w", w), ("bias", b)):
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{where}: {name} must be integer, not {a.dtype}")
        if w.shape != spec.weight_shape:
            raise ValueError(f"{where}: w has shape {w.shape}, spec says {spec.weight_shape}")
        if b.shape != (spec.out_ch,):
            raise ValueError(f"{where}: bias has shape {b.shape}, spec says ({spec.out_ch},)")
        if b.size and (b.min() < b_lo or b.max() > b_hi):
            raise ValueError(f"{where}: bias outside {p.bias_bits}-bit range [{b_lo}, {b_hi}]")
        if not spec.out_shift < 63:
            raise ValueError(f"{where}: out_shift {spec.out_shift} must be below 63")
        w64 = w.astype(np.int64)
        if spec.signed_weights:
            if not isinstance(p, BMParams):
                raise ValueError(f"{where}: a MAC layer has no {spec.neuron!r} neuron")
            if i != len(exp.layers) - 1:
                raise ValueError(
                    f"{where}: the {spec.neuron!r} neuron is built only as the classifier (the"
                    " last layer)"
                )
            if spec.c_shift != 0:
                raise ValueError(f"{where}: a {spec.neuron!r} head has no c_shift")
            sg = t.get("sign")
            if sg is None:
                raise ValueError(f"{where}: a {spec.neuron!r} head needs a sign per weight")
            sg = np.asarray(sg)
            if not np.issubdtype(sg.dtype, np.integer) or sg.shape != spec.weight_shape:
                raise ValueError(f"{where}: sign must be integer of shape {spec.weight_shape}")
            if sg.size and (sg.min() < 0 or sg.max() > 1):
                raise ValueError(f"{where}: weight signs must be 0 or 1")
        elif "sign" in t and t["sign"] is not None:
            raise ValueError(f"{where}: a {spec.neuron!r} layer has no weight signs")
        if isinstance(p, BMParams):
            if w64.min() < p.w_log_min or w64.max() > p.w_log_max:
                raise ValueError(
                    f"{where}: log weight codes outside [{p.w_log_min}, {p.w_log_max}]"
                )
            if spec.c_shift > p.max_c_shift:
                raise ValueError(f"{where}: c_shift {spec.c_shift} > max_c_shift {p.max_c_shift}")
        else:
            if w64.min() < p.w_min or w64.max() > p.w_max:
                raise ValueError(f"{where}: weights outside [{p.w_min}, {p.w_max}]")
            if spec.c_shift != 0:
                raise ValueError(f"{where}: a MAC layer has no c_shift, not {spec.c_shift}")
            w2 = w64.reshape(spec.out_ch, -1)
            pos = np.where(w2 > 0, w2, 0).sum(1)
            neg = np.where(w2 < 0, -w2, 0).sum(1)
            worst = p.a_max * np.maximum(pos, neg) + np.abs(b.astype(np.int64))
            if worst.max() >= 1 << (p.acc_bits - 1):
                raise ValueError(f"{where}: the accumulator can overflow {p.acc_bits} bits")


# -- the container -----------------------------------------------------------------------------
def write_container(path, meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """Write ``meta`` (stamped with the schema, this version and its ``graph``) and ``arrays``
    atomically to ``path`` (a temporary file beside it, then a rename); returns the checksum."""
    path = Path(path)
    if meta.get("graph") not in GRAPHS:
        raise ExportError(f"{path}: graph must be one of {GRAPHS}, not {meta.get('graph')!r}")
    meta = {**meta, "schema": SCHEMA, "schema_version": SCHEMA_VERSION}
    checksum = compute_checksum(meta, arrays)
    payload = {
        "meta": np.frombuffer(_canonical_json(meta), dtype=np.uint8),
        "checksum": np.frombuffer(checksum.encode(), dtype=np.uint8),
        **arrays,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return checksum


def read_container(path, graph: str) -> tuple[dict, dict[str, np.ndarray], str]:
    """``(meta, arrays, checksum)`` of an export of ``graph``, its checksum verified.

    Raises :class:`ExportError` naming the file for an unreadable or damaged zip, another
    schema, an unsupported version, a checksum mismatch, or an export of another graph.
    """
    path = Path(path)

    def fail(msg, err=None):
        raise ExportError(f"{path}: {msg}") from err

    try:
        raw = path.read_bytes()
    except OSError as err:
        fail(f"cannot read the export: {err}", err)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as err:
        fail(f"not a readable export (truncated or corrupt .npz): {err}", err)
    except Exception as err:  # zlib/struct errors from a damaged member
        fail(f"not a readable export (corrupt member): {type(err).__name__}: {err}", err)
    for key in ("meta", "checksum"):
        if key not in arrays:
            fail(f"missing member {key!r}; is this a network export?")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        stored = arrays.pop("checksum").tobytes().decode()
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        fail(f"the meta record is not valid JSON: {err}", err)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        fail(
            f"schema is {meta.get('schema') if isinstance(meta, dict) else None!r}, "
            f"expected {SCHEMA!r}"
        )
    version = meta.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        fail(
            f"schema version {version!r} is not supported (this loader reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    actual = compute_checksum(meta, arrays)
    if actual != stored:
        fail(f"checksum mismatch: stored {stored[:16]}..., contents hash to {actual[:16]}...")
    got = meta.get("graph", "chain") if version >= 2 else "chain"
    if got != graph:
        where = {"chain": "a layer chain (model.export.load_export)",
                 "resnet22": "the integer ResNet-22 (model.reference.resnet.load_resnet_export)"}
        fail(f"this is an export of {where.get(got, repr(got))}, not of {where[graph]}")
    return meta, arrays, stored


# -- save / load -------------------------------------------------------------------------------
def save_export(path, exp: NetworkExport) -> NetworkExport:
    """Validate ``exp`` and write it atomically to ``path``; returns it with its checksum set."""
    path = Path(path)
    try:
        validate(exp)
    except ValueError as err:
        raise ExportError(f"{path}: refusing to write an invalid export: {err}") from err
    meta = dict(exp.meta(), graph="chain")
    checksum = write_container(path, meta, exp.arrays())
    return NetworkExport(
        preset=exp.preset,
        params=exp.params,
        layers=tuple(exp.layers),
        tensors=tuple(exp.tensors),
        input_shape=tuple(exp.input_shape),
        pixel_shift=exp.pixel_shift,
        metadata=exp.metadata,
        aux=dict(exp.aux),
        schema_version=SCHEMA_VERSION,
        checksum=checksum,
    )


def load_export(path) -> NetworkExport:
    """Read and fully validate a chain export; any problem raises :class:`ExportError`."""
    path = Path(path)

    def fail(msg, err=None):
        raise ExportError(f"{path}: {msg}") from err

    meta, arrays, stored = read_container(path, "chain")
    version = meta["schema_version"]
    try:
        params = params_from_dict(meta["params"])
        layers = tuple(LayerSpec(**d) for d in meta["layers"])
        tensors = []
        for i, spec in enumerate(layers):
            t = {"w": arrays[f"layer{i}.w"], "bias": arrays[f"layer{i}.bias"]}
            if spec.signed_weights:
                t["sign"] = arrays[f"layer{i}.sign"]
            tensors.append(t)
        aux = {k[4:]: v for k, v in arrays.items() if k.startswith("aux.")}
        extra = set(arrays) - {f"layer{i}.{k}" for i in range(len(layers)) for k in tensors[i]}
        extra -= {f"aux.{k}" for k in aux}
        if extra:
            raise ValueError(f"unexpected members {sorted(extra)}")
        exp = NetworkExport(
            preset=str(meta["preset"]),
            params=params,
            layers=layers,
            tensors=tuple(tensors),
            input_shape=tuple(int(v) for v in meta["input"]["shape"]),
            pixel_shift=int(meta["input"]["pixel_shift"]),
            metadata=dict(meta.get("metadata", {})),
            aux=aux,
            schema_version=version,
            checksum=stored,
        )
        validate(exp)
    except (KeyError, TypeError, ValueError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        fail(f"invalid export: {what}", err)
    return exp
