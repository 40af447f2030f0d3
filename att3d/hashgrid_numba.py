"""The numba-compiled loop behind :mod:`att3d.hashgrid_cpu` (imported only by it, on first use).

One pass over the points, parallel over points; per point and level the 8 corner rows and trilinear
weights stay in registers and the features are summed in the order of :func:`att3d.encoding.encode_levels`
(so the results match it bit for bit). ``cache=True`` stores the machine code beside this file (or in
``NUMBA_CACHE_DIR``), so only the first process on a machine compiles.
"""

from __future__ import annotations

import numba
import numpy as np

_PRIME_Y, _PRIME_Z = 2654435761, 805459861  # att3d.encoding._PRIMES (x's prime is 1)


@numba.njit(inline="always", cache=True)
def corner(out, i, level, tables, row, weight, first):  # pragma: no cover
    # Summed corner by corner in the reference's order (corners 0 + 1, then 2..7).
    for f in range(tables.shape[1]):
        value = tables[row, f] * weight
        out[i, level, f] = value if first else out[i, level, f] + value


@numba.njit(parallel=True, cache=True, nogil=True)
def encode(points, prompt, tables, offsets, sizes, resolutions, dense, out):  # pragma: no cover
    # points [N, 3] in [0, 1] (clamped here), prompt [N] (empty: grid 0), tables [sum rows*T_l, W],
    # offsets/sizes/resolutions/dense [L], out [N, L, W].
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in numba.prange(points.shape[0]):
        p = 0 if prompt.shape[0] == 0 else prompt[i]
        px = min(max(points[i, 0], zero), one)
        py = min(max(points[i, 1], zero), one)
        pz = min(max(points[i, 2], zero), one)
        for level in range(resolutions.shape[0]):
            r, size = resolutions[level], sizes[level]
            rf, top = np.float32(r), np.float32(r - 1)
            sx, sy, sz = px * rf, py * rf, pz * rf
            bx = min(max(np.float32(np.floor(sx)), zero), top)
            by = min(max(np.float32(np.floor(sy)), zero), top)
            bz = min(max(np.float32(np.floor(sz)), zero), top)
            fx, fy, fz = sx - bx, sy - by, sz - bz
            gx, gy, gz = one - fx, one - fy, one - fz
            ix, iy, iz = np.int64(bx), np.int64(by), np.int64(bz)
            if dense[level]:
                y0, z0 = iy * (r + 1), iz * (r + 1) * (r + 1)
                y1, z1 = y0 + (r + 1), z0 + (r + 1) * (r + 1)
                x0, x1 = ix, ix + 1
                mask = np.int64(-1)
            else:
                y0, z0 = iy * _PRIME_Y, iz * _PRIME_Z
                y1, z1 = y0 + _PRIME_Y, z0 + _PRIME_Z
                x0, x1 = ix, ix + 1
                mask = size - 1
            base = offsets[level] + p * size
            # Corner 4 i + 2 j + k steps i, j, k along x, y, z; its weight is (w_x w_y) w_z.
            gxy, gxfy, fxgy, fxy = gx * gy, gx * fy, fx * gy, fx * fy
            if dense[level]:
                rows = (
                    x0 + y0 + z0,
                    x0 + y0 + z1,
                    x0 + y1 + z0,
                    x0 + y1 + z1,
                    x1 + y0 + z0,
                    x1 + y0 + z1,
                    x1 + y1 + z0,
                    x1 + y1 + z1,
                )
            else:
                rows = (
                    (x0 ^ y0 ^ z0) & mask,
                    (x0 ^ y0 ^ z1) & mask,
                    (x0 ^ y1 ^ z0) & mask,
                    (x0 ^ y1 ^ z1) & mask,
                    (x1 ^ y0 ^ z0) & mask,
                    (x1 ^ y0 ^ z1) & mask,
                    (x1 ^ y1 ^ z0) & mask,
                    (x1 ^ y1 ^ z1) & mask,
                )
            corner(out, i, level, tables, base + rows[0], gxy * gz, True)
            corner(out, i, level, tables, base + rows[1], gxy * fz, False)
            corner(out, i, level, tables, base + rows[2], gxfy * gz, False)
            corner(out, i, level, tables, base + rows[3], gxfy * fz, False)
            corner(out, i, level, tables, base + rows[4], fxgy * gz, False)
            corner(out, i, level, tables, base + rows[5], fxgy * fz, False)
            corner(out, i, level, tables, base + rows[6], fxy * gz, False)
            corner(out, i, level, tables, base + rows[7], fxy * fz, False)
