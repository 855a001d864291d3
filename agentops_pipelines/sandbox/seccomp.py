"""A seccomp filter for what Landlock does not govern: sockets other than TCP, and io_uring.

Landlock (up to ABI 7) restricts TCP ports but not connecting to a Unix socket file (a local
Postgres with trust authentication, say) nor UDP. This filter lets ``socket()`` make TCP sockets
only (AF_INET/AF_INET6, SOCK_STREAM: Landlock then decides their ports) and refuses
``io_uring_setup`` (io_uring's own socket operations would bypass seccomp). Anything else is
untouched. ``socketpair`` stays allowed: a connected pair reaches nothing outside the process.

classic BPF over ``struct seccomp_data`` (nr at 0, arch at 4, args[i] at 16 + 8 i), see
seccomp(2). Known architectures only: x86-64 and arm64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket

# arch -> (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup)
_ARCHES = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
_X32_BIT = 0x40000000  # x86-64's x32 ABI: the same calls under other numbers
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_LD_W_ABS, _JEQ_K, _JGE_K, _AND_K, _RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
_SOCK_TYPE_MASK = 0xF  # without SOCK_NONBLOCK / SOCK_CLOEXEC


class SeccompError(RuntimeError):
    pass


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() in _ARCHES


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) rows; jumps are relative to the next row."""
    audit_arch, nr_socket, nr_io_uring = _ARCHES[machine]
    deny = _RET_ERRNO | errno.EACCES
    return [
        (_LD_W_ABS, 0, 0, 4),                      # 0 arch
        (_JEQ_K, 1, 0, audit_arch),                # 1 ours: go on; else
        (_RET_K, 0, 0, _RET_KILL_PROCESS),         # 2 another ABI (i386 on x86-64): never
        (_LD_W_ABS, 0, 0, 0),                      # 3 nr
        (_JGE_K, 10, 0, _X32_BIT),                 # 4 an x32 call -> deny (15)
        (_JEQ_K, 9, 0, nr_io_uring),               # 5 io_uring_setup -> deny (15)
        (_JEQ_K, 0, 7, nr_socket),                 # 6 socket: go on; else allow (14)
        (_LD_W_ABS, 0, 0, 16),                     # 7 args[0]: the family
        (_JEQ_K, 1, 0, socket.AF_INET),            # 8 -> 10
        (_JEQ_K, 0, 5, socket.AF_INET6),           # 9 neither -> deny (15)
        (_LD_W_ABS, 0, 0, 24),                     # 10 args[1]: the type
        (_AND_K, 0, 0, _SOCK_TYPE_MASK),           # 11
        (_JEQ_K, 1, 0, socket.SOCK_STREAM),        # 12 TCP -> allow (14)
        (_RET_K, 0, 0, deny),                      # 13 UDP, raw, ...
        (_RET_K, 0, 0, _RET_ALLOW),                # 14
        (_RET_K, 0, 0, deny),                      # 15
    ]  # fmt: skip


def install() -> None:
    """Install the filter on this process (and its future children), for good."""
    if not supported():
        raise SeccompError(f"no seccomp filter for {platform.system()} {platform.machine()}")
    rows = program(platform.machine())
    filters = (_Filter * len(rows))(*(_Filter(*row) for row in rows))
    prog = _Program(len(rows), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise SeccompError(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
