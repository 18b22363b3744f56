"""Native kernels, built at first use with the machine's own C++ compiler.

:func:`kernels` returns the kernels of ``kernels.cc`` through ``ctypes`` (the hard-max BM
branch's max-times convolution, the float64 convolution of the smooth branches and their fused
float32 elementwise passes), or ``None``
where they cannot be had: no C++ compiler, a failed build, ``BM_NATIVE=0`` in the environment.
Callers then take their portable path, so a missing compiler costs speed, never correctness.

The library is compiled with ``-O3 -march=native`` into a per-user cache (``$BM_NATIVE_CACHE``,
else ``$XDG_CACHE_HOME/bmnet``, else ``~/.cache/bmnet``; the temporary folder if that cannot be
written), named by a hash of the source, the compiler and the CPU, and written atomically, so
concurrent runs and other machines sharing a home directory never load a half-written or
foreign build.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["kernels"]

_SRC = Path(__file__).with_name("kernels.cc")
_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet


def _cache_dir() -> Path:
    if os.environ.get("BM_NATIVE_CACHE"):
        return Path(os.environ["BM_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bmnet"


def _cpu_id() -> str:
    """The CPU's model and feature flags (``-march=native`` code is only valid on a like CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _build(cc: str) -> Path:
    src = _SRC.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(src + version.encode() + _cpu_id().encode()).hexdigest()[:16]
    name = f"kernels-{key}.so"
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"bmnet-{os.getuid()}"):
        if (folder / name).exists():
            return folder / name
        try:  # a read-only home: the temporary folder instead
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no writable cache folder")
    out = folder / name
    os.close(fd)
    try:
        cmd = [cc, "-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-o", tmp, str(_SRC)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else cmd)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL | None:
    if os.environ.get("BM_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CXX") or next(
        filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None
    )
    if cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"native kernels unavailable ({e}); using the portable paths", stacklevel=3)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.maxtimes_vec_bytes.restype = ctypes.c_int
    for suf in ("f32", "f64"):
        getattr(lib, f"maxtimes_forward_{suf}").argtypes = [p, p, p, p] + [i64] * 6
        getattr(lib, f"maxtimes_backward_{suf}").argtypes = [p] * 6 + [i64] * 7
    lib.conv_f64.argtypes = lib.conv_wgrad_f64.argtypes = [p] * 3 + [i64] * 6
    f32, i32 = ctypes.c_float, ctypes.c_int
    lib.smooth_powers_f32.argtypes = [p, i64, f32, p, p, p, i32]
    lib.smooth_finish_f32.argtypes = [p] * 3 + [i64] * 4 + [f32, i32, p, i32]
    lib.smooth_grad_out_f32.argtypes = [p] * 5 + [i64] * 5 + [f32, f32, i32, i32, p, p, i32]
    lib.smooth_through_f32.argtypes = [p] * 5 + [i64, f32, i32, i32, p, i32]
    lib.smooth_grad_out_f32.restype = lib.smooth_through_f32.restype = ctypes.c_double
    lib.vec_bytes = lib.maxtimes_vec_bytes()  # the SIMD width it was built for, read once
    return lib


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels (``maxtimes_forward_f32`` ... ``smooth_through_f32``), or ``None``."""
    global _lib
    if _lib is False:
        with _lock:
            if _lib is False:
                _lib = _load()
    return _lib
