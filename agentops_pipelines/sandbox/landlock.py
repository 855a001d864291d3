"""Linux Landlock through ctypes: a process gives up every file and TCP port it does not name.

Landlock (Linux 5.13+, no privileges needed) lets a process restrict itself, for good and with
every process it starts, to the paths it lists (read-only or read-write) and, from ABI 4 (Linux
6.7), to the TCP ports it may connect to (binding none). From ABI 6 it also scopes abstract Unix
sockets and signals to the sandbox. What it does not govern (up to ABI 7): connecting to a Unix
socket *file* (a local Postgres's ``/var/run/postgresql/.s.PGSQL.5432``), UDP, and what the
process already holds open. :mod:`.seccomp` closes the first two; the sandbox starts its child
with nothing open.

Struct layouts and constants: ``include/uapi/linux/landlock.h`` and landlock(7). The system call
numbers are the same on x86-64 and arm64 (the unified table).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from pathlib import Path

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (LANDLOCK_ACCESS_FS_*), bit i, and the ABI that introduced each.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# Rights that make sense on a file (a rule on a file with a directory right is EINVAL).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1  # LANDLOCK_ACCESS_NET_*, ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # LANDLOCK_SCOPE_*, ABI 6


class LandlockError(RuntimeError):
    """Landlock refused a step: the process must not go on as if it were restricted."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The kernel's Landlock ABI (1, 2, ...), or 0 where there is none (not Linux, an old kernel,
    Landlock disabled at boot, or a seccomp profile that hides it)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def handled_fs(abi: int) -> int:
    """Every filesystem right ABI ``abi`` knows: all of them are denied unless a rule grants them."""
    return next(rights for since, rights in sorted(_FS_BY_ABI.items(), reverse=True) if abi >= since)


def restrict(read: Iterable[Path], write: Iterable[Path] = (), connect_ports: Iterable[int] = ()) -> int:
    """Restrict this process (and its future children) to reading ``read``, reading and writing
    ``write`` (each path and everything beneath it), and connecting to TCP ``connect_ports``
    (ABI 4+; no TCP bind at all). Paths that do not exist are skipped. Returns the ABI used;
    raises :class:`LandlockError` when Landlock is missing or any step fails."""
    abi = abi_version()
    if abi < 1:
        raise LandlockError("Landlock is not available on this kernel")
    libc = _libc()
    fs = handled_fs(abi)
    attr = _RulesetAttr(fs, BIND_TCP | CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct as this ABI knows it
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise LandlockError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in read:
            _allow_path(libc, ruleset, Path(path), READ)
        for path in write:
            _allow_path(libc, ruleset, Path(path), fs)
        if abi >= 4:
            for port in connect_ports:
                _add_rule(libc, ruleset, _RULE_NET_PORT, _NetPortAttr(CONNECT_TCP, int(port)), f"TCP port {port}")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise LandlockError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise LandlockError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


def _allow_path(libc, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not path.is_dir():
            rights &= _FILE_RIGHTS
        _add_rule(libc, ruleset, _RULE_PATH_BENEATH, _PathBeneathAttr(rights, fd), str(path))
    finally:
        os.close(fd)


def _add_rule(libc, ruleset: int, kind: int, attr: ctypes.Structure, what: str) -> None:
    if libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(kind), ctypes.byref(attr), ctypes.c_uint32(0)) != 0:
        raise LandlockError(f"landlock_add_rule({what}): {os.strerror(ctypes.get_errno())}")
