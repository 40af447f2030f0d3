"""A compiled CPU kernel for the hash-grid encoding's forward pass (inference only; issue #16).

:func:`att3d.encoding.encode_levels` runs every level as a handful of whole-array PyTorch ops, each of
which writes ``[8, N]`` temporaries to memory. This kernel walks the points once, parallel over points,
and keeps a point's corners, weights and sums in registers: the per-prompt table (~0.4 MB) stays in cache
and the only memory traffic is the points in and the features out.

Why numba (and not a PyTorch C++ extension): numba ships as binary wheels for every platform PyTorch
does, so ``make run`` / ``make test`` on a fresh machine need no compiler, no ``ninja`` and no Python
headers; a C++ extension built just-in-time needs all three at run time (``g++`` is absent from slim
images), and one built at install ties the wheel to one torch ABI. Numba's costs are a first-call compile
(~1-2 s, cached on disk with ``cache=True`` so later processes load it in ~0.1 s; :func:`warm` pays it
at model load, never in a request) and one dependency (llvmlite). If numba is missing or the compile
fails, :func:`status` says why once in the log and callers keep the pure-PyTorch path.

Exactness: the kernel performs the reference's float32 operations in the same order (weights
``(w_x w_y) w_z``, products ``table * weight`` summed corner 0 to 7; no fast-math, so no fused
multiply-adds), so its features equal :func:`att3d.encoding.encode_levels`' bit for bit on the same
inputs and the meshes are identical (``tests/test_hashgrid_cpu.py``).

Threads: ``prange`` splits the points over ``torch.get_num_threads()`` numba threads. Numba's default
``workqueue`` threading layer must not be entered by two Python threads at once, so calls hold a lock.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

_lock = threading.Lock()
_kernel = None
_status: str | None = "not loaded"
_tried = False


def _compile():
    # The jitted functions live in their own module, imported only here: importing numba costs ~0.5 s,
    # and numba's on-disk cache works for module-level functions (not for closures).
    from att3d import hashgrid_numba

    return hashgrid_numba.encode


def status() -> str | None:
    """``None`` when the kernel is compiled and usable, else why not (logged once)."""
    global _kernel, _status, _tried
    if _tried:
        return _status
    with _lock:
        if not _tried:
            start = time.perf_counter()
            try:
                kernel = _compile()
                _run(kernel, *_example())
            except Exception as error:  # any failure means: use the PyTorch path
                _status = f"the numba hash-grid kernel is unavailable ({type(error).__name__}: {error})"
                log.warning("%s; using the PyTorch encoding", _status)
            else:
                _kernel, _status = kernel, None
                log.info("numba hash-grid kernel ready in %.2f s", time.perf_counter() - start)
            _tried = True
    return _status


def warm() -> bool:
    """Compile (or load from numba's cache) the kernel now, e.g. at model load; True if usable."""
    return status() is None


def _example():
    points = np.full((2, 3), 0.5, dtype=np.float32)
    tables = np.zeros((8 + 16, 1), dtype=np.float32)
    meta = np.array([0, 8], dtype=np.int64), np.array([8, 16], dtype=np.int64), np.array([1, 4])
    dense = np.array([True, False])
    out = np.empty((2, 2, 1), dtype=np.float32)
    return points, np.empty(0, dtype=np.int64), tables, *meta, dense, out


def _run(kernel, points, prompt, tables, offsets, sizes, resolutions, dense, out) -> None:
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    kernel(points, prompt, tables, offsets, sizes, resolutions.astype(np.int64), dense, out)


class PackedTables:
    """Per-level tables ``[rows * T_l, W]`` (float32) packed into one array for the kernel."""

    def __init__(self, tables: list[Tensor], resolutions: list[int], table_sizes: list[int]) -> None:
        rows = [t.shape[0] for t in tables]
        self.tables = torch.cat([t.detach().float() for t in tables]).contiguous().numpy()
        self.offsets = np.cumsum([0, *rows[:-1]]).astype(np.int64)
        self.sizes = np.asarray(table_sizes, dtype=np.int64)
        self.resolutions = np.asarray(resolutions, dtype=np.int64)
        self.dense = np.asarray([(r + 1) ** 3 <= s for r, s in zip(resolutions, table_sizes, strict=True)])
        for size, dense in zip(table_sizes, self.dense, strict=True):
            if not dense and size & (size - 1):
                raise ValueError(f"a hashed level needs a power-of-two table size, got {size}")

    @property
    def levels(self) -> int:
        return len(self.sizes)


def encode(packed: PackedTables, x: Tensor, prompt: Tensor | None = None) -> Tensor:
    """Features ``[N, levels, W]`` (float32, contiguous) of points ``x [N, 3]``, equal to
    :func:`att3d.encoding.encode_levels` on the same tables. Call only after :func:`status` is ``None``."""
    if _kernel is None:
        raise RuntimeError(_status or "the numba hash-grid kernel is not loaded")
    points = x.detach().float().contiguous().numpy()
    ids = np.empty(0, dtype=np.int64) if prompt is None else prompt.to(torch.int64).contiguous().numpy()
    out = torch.empty(len(points), packed.levels, packed.tables.shape[1], dtype=torch.float32)
    with _lock:
        _run(
            _kernel,
            points,
            ids,
            packed.tables,
            packed.offsets,
            packed.sizes,
            packed.resolutions,
            packed.dense,
            out.numpy(),
        )
    return out
