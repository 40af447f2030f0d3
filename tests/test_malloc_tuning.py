"""glibc malloc tuning: mallopt with the documented parameters where glibc is, nothing elsewhere."""

from __future__ import annotations

import ctypes

from att3d import malloc_tuning


class RecordingLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: ctypes.c_int, value: ctypes.c_int) -> int:
        self.calls.append((param.value, value.value))
        return 1


def test_glibc_gets_the_three_settings(monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(malloc_tuning, "_libc", lambda: libc)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert malloc_tuning.tune() == ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"]
    # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD (glibc <malloc.h>)
    assert libc.calls == [(-1, 1073741824), (-2, 268435456), (-3, 33554432)]


def test_a_variable_in_the_environment_wins(monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(malloc_tuning, "_libc", lambda: libc)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert malloc_tuning.tune() == ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"]
    assert [param for param, _ in libc.calls] == [-1, -2]


def test_without_glibc_nothing_is_called(monkeypatch):
    monkeypatch.setattr(malloc_tuning.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert malloc_tuning._libc() is None
    assert malloc_tuning.tune() == []


def test_the_real_libc_accepts_the_settings_when_it_is_glibc():
    libc = malloc_tuning._libc()
    if libc is not None:
        assert all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, v, _ in malloc_tuning.SETTINGS)
