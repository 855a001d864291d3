"""Keep one serving process alive: ``python -m agentops_pipelines.serving.supervisor ... -- CMD``.

The local deployer starts this small process (standard library only, a few MB) detached, once per
agent and environment; it runs the serving process ``CMD`` as its child and:

- **restarts it when it dies** (``kill -9``, a crash, the OOM killer) with the same command, so on
  the same port: the URL never moves. A server that was hot-swapped since it started comes back
  with the version it last served (read from its state file; a canary is dropped, the stable
  version keeps serving). Restarts back off (``--backoff-s`` doubling up to ``--backoff-max-s``,
  reset once a server has served for ``--stable-after-s``); more than ``--max-restarts`` restarts
  within ``--restart-window-s`` is a crash loop: the supervisor stops, says so in its log and in
  its supervision file (``status: crash_loop``), and exits 1.
- **takes the server with it**: the child gets ``PR_SET_PDEATHSIG`` (Linux, through ``prctl``), so
  even a ``kill -9`` of the supervisor stops the server (with SIGTERM: it drains and flushes its
  inference log); on SIGTERM or SIGINT the supervisor forwards SIGTERM, waits up to
  ``--stop-timeout-s``, then kills what is left. The server runs in its own process group, which
  is killed once the server is gone, so helpers it started (the tracer) never outlive it.
- **records what happens** in ``--supervision-file`` (JSON, replaced atomically): its pid, the
  server's pid, status (``starting``, ``serving``, ``restarting``, ``crash_loop``, ``failed``,
  ``stopped``), restarts, the last exit and when, read by ``agentops status``.

A server that exits before it ever served (bad model, port taken) is not restarted: the deploy
failed, and the deployer reports the log. A server that exits with code 0 was stopped on purpose
(someone sent it SIGTERM): the supervisor stops too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_S = 0.1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"{_now()} supervisor[{os.getpid()}]: {message}", flush=True)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec: receive ``sig`` when the parent dies (Linux only; a
    no-op elsewhere). If the parent is already gone, exit at once."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _with_option(command: list[str], option: str, value: str) -> list[str]:
    """``command`` with ``option``'s value replaced (appended if absent)."""
    command = list(command)
    if option in command[:-1]:
        command[command.index(option) + 1] = value
    else:
        command += [option, value]
    return command


def _option(command: list[str], option: str) -> str:
    return command[command.index(option) + 1] if option in command[:-1] else "?"


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    def __init__(self, command: list[str], state_file: Path, supervision_file: Path, *,
                 max_restarts: int, restart_window_s: float, backoff_s: float,
                 backoff_max_s: float, stable_after_s: float, stop_timeout_s: float) -> None:
        self.command = command
        self.state_file = state_file
        self.supervision_file = supervision_file
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.record: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "server_pid": None,
            "status": "starting",
            "restarts": 0,
            "started_at": _now(),
            "last_exit": None,
            "last_exit_at": None,
            "last_restart_at": None,
            "max_restarts": max_restarts,
            "restart_window_s": restart_window_s,
            "state_file": str(state_file),
        }

    # -- bookkeeping

    def _save(self, **changes: Any) -> None:
        self.record.update(changes)
        try:
            _write_json_atomic(self.supervision_file, self.record)
        except OSError as e:  # the folder was removed: keep supervising regardless
            _log(f"could not write {self.supervision_file}: {e}")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)  # the server drains and flushes its log
            except ProcessLookupError:
                pass

    # -- the child

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, close_fds=True,
            process_group=0,  # its helpers are killed with it (see _reap_group)
            preexec_fn=die_with_parent,  # the supervisor is single-threaded: safe
        )  # fmt: skip
        self._save(server_pid=child.pid)
        return child

    def _serving(self, child: subprocess.Popen) -> bool:
        state = _read_json(self.state_file)
        return state.get("pid") == child.pid and state.get("status") == "serving"

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Kill whatever the dead server left in its process group (e.g. its tracer)."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _stop_child(self, child: subprocess.Popen) -> None:
        if child.poll() is None:
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            child.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            _log(f"server pid {child.pid} still running {self.stop_timeout_s:.0f}s after SIGTERM: killing it")
            child.kill()
            child.wait()
        self._reap_group(child.pid)

    def _restart_command(self, child: subprocess.Popen) -> list[str]:
        """The command again, with the version the dead server last served."""
        state = _read_json(self.state_file)
        command = self.command
        if state.get("pid") == child.pid and state.get("model_uri") and state.get("version"):
            command = _with_option(command, "--model-uri", str(state["model_uri"]))
            command = _with_option(command, "--version", str(state["version"]))
            if state.get("canary_version") is not None:
                _log(f"canary version {state['canary_version']} dropped by the restart; "
                     f"stable version {state['version']} keeps serving")
        return command

    # -- the loop

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        command = self.command
        restarts: deque[float] = deque()
        failures = 0  # consecutive: servers that died soon after starting
        ever_served = False
        while True:
            started = time.monotonic()
            child = self.child = self._spawn(command)
            _log(f"server pid {child.pid} started: {_option(command, '--model-uri')} version "
                 f"{_option(command, '--version')} (restarts so far: {self.record['restarts']})")
            served_since: float | None = None
            while child.poll() is None and not self.stopping:
                if served_since is None and self._serving(child):
                    served_since = time.monotonic()
                    ever_served = True
                    self._save(status="serving")
                time.sleep(POLL_S)
            if self.stopping:
                self._stop_child(child)
                _log(f"stopped; server pid {child.pid} {_describe(child.returncode)}")
                self._save(status="stopped", server_pid=None, last_exit=_describe(child.returncode),
                           last_exit_at=_now())
                return 0
            code = child.returncode
            ran_s = time.monotonic() - started
            if not ever_served and self._serving(child):  # it served, then died before the next look
                served_since = time.monotonic()
                ever_served = True
            self._reap_group(child.pid)
            self._save(last_exit=_describe(code), last_exit_at=_now(), server_pid=None)
            if code == 0:
                _log(f"server pid {child.pid} exited cleanly after {ran_s:.1f}s: stopping too")
                self._save(status="stopped")
                return 0
            if not ever_served:
                _log(f"server pid {child.pid} {_describe(code)} before it ever served: not restarting")
                self._save(status="failed")
                return code if code > 0 else 1
            now = time.monotonic()
            restarts.append(now)
            while restarts and now - restarts[0] > self.restart_window_s:
                restarts.popleft()
            if len(restarts) > self.max_restarts:
                _log(f"crash loop: server {_describe(code)} after {ran_s:.1f}s, "
                     f"{len(restarts) - 1} restarts within {self.restart_window_s:.0f}s "
                     f"(limit {self.max_restarts}): giving up, nothing serves. Deploy again to retry.")
                self._save(status="crash_loop")
                return 1
            # a server that served for stable_after_s was healthy: back off from scratch
            quick = served_since is None or now - served_since < self.stable_after_s
            failures = failures + 1 if quick else 1
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
            command = self._restart_command(child)
            self._save(status="restarting", restarts=self.record["restarts"] + 1,
                       last_restart_at=_now())
            _log(f"server pid {child.pid} {_describe(code)} after {ran_s:.1f}s: "
                 f"restart {self.record['restarts']} in {delay:.1f}s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if self.stopping:
                _log("stopped while waiting to restart")
                self._save(status="stopped")
                return 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m agentops_pipelines.serving.supervisor [options] -- COMMAND...")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m agentops_pipelines.serving.supervisor",
                                description=__doc__.split("\n")[0])
    p.add_argument("--state-file", required=True, help="the server's state file (its --state-file)")
    p.add_argument("--supervision-file", required=True, help="where this supervisor reports")
    p.add_argument("--max-restarts", type=int, default=5)
    p.add_argument("--restart-window-s", type=float, default=300.0)
    p.add_argument("--backoff-s", type=float, default=0.5, help="the first restart's delay")
    p.add_argument("--backoff-max-s", type=float, default=30.0)
    p.add_argument("--stable-after-s", type=float, default=60.0,
                   help="a server that served this long resets the backoff")
    p.add_argument("--stop-timeout-s", type=float, default=10.0)
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        p.error("no command after --")
    return args, command


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(argv)
    supervision_file = Path(args.supervision_file).resolve()
    supervision_file.parent.mkdir(parents=True, exist_ok=True)
    return Supervisor(
        command, Path(args.state_file).resolve(), supervision_file,
        max_restarts=args.max_restarts, restart_window_s=args.restart_window_s,
        backoff_s=args.backoff_s, backoff_max_s=args.backoff_max_s,
        stable_after_s=args.stable_after_s, stop_timeout_s=args.stop_timeout_s,
    ).run()


if __name__ == "__main__":
    sys.exit(main())
