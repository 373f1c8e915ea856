"""cct.host: glibc's malloc serves large blocks from the heap once asked, and leaves alone a process
whose user configured malloc."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from cct import host

# A 64 MiB malloc before and after keep_freed_memory(): bytes in mmapped blocks (mallinfo2's hblkhd)
# grow by it before, not after; and after its free, the heap keeps it (no trim: arena grows).
PROBE = """
import ctypes, json, sys
from cct.host import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20

def mapped_by_malloc():
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    grown = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grown, libc.mallinfo2().fordblks

default, _ = mapped_by_malloc()
applied = keep_freed_memory()
tuned, free_after = mapped_by_malloc()
print(json.dumps(dict(default=default, applied=applied, tuned=tuned, free_after=free_after)))
"""


def glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


def run_probe(env: dict[str, str]) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not glibc(), reason="glibc's malloc (mallinfo2) only")
def test_large_blocks_come_from_the_heap_and_stay_there_once_applied():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    got = run_probe(env)
    assert got["default"] >= 64 << 20, got  # glibc's default: a fresh mapping per large block
    assert got["applied"] is True
    assert got["tuned"] == 0, got  # served from the heap
    assert got["free_after"] >= 64 << 20, got  # and kept there, free, for the next allocation


@pytest.mark.skipif(not glibc(), reason="glibc's malloc (mallinfo2) only")
@pytest.mark.parametrize("user", [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}])
def test_a_user_configured_malloc_is_left_alone(user):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | user
    got = run_probe(env)
    assert got["applied"] is False
    assert got["tuned"] == got["default"] > 0, got


def test_not_applied_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert host.keep_freed_memory() is False
