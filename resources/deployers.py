"""Deployers: put model versions behind the serving endpoint of an environment.

``Deployer`` is the interface the deployment assets use: ``deploy`` is a full rollout of a stable
version (any canary is dropped); ``deploy_canary`` sends a share of the traffic (sticky per
customer) to a second version next to the stable one; ``promote_canary`` makes it the stable
version; ``abort_canary`` drops it; ``stats`` reports requests, errors and latency per role over a
recent window (the server's ``GET /admin/stats``), for bake-time health checks.

``LocalProcessDeployer`` runs ``python -m agentops_pipelines.serving`` as a detached local process
per environment, with its state file (``<state_dir>/<environment>.json``, written by the server)
and log (``<state_dir>/<environment>.log``) side by side. A deploy to a healthy running server
hot-swaps the model through ``POST /admin/load`` (same process, same port); otherwise a new process
starts. Canary operations need a running server (deploy a stable version first). With
``inference_log_dir`` set, the server appends every request to
``<inference_log_dir>/<agent>/<environment>/`` (the agent is the registered model's name in
``models:/<agent>/...``); ``trace_sample_rate`` is the share of requests traced in MLflow (failed
ones always are). Both apply when a process starts, not to a hot swap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "AGENTOPS_SERVING_ADMIN_TOKEN"  # read by agentops_pipelines.serving.server
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SERVER_MODULE = "agentops_pipelines.serving"
_REGISTERED_NAME = re.compile(r"^models:/([^/@]+)")
_children: dict[int, subprocess.Popen] = {}  # processes started here, so they can be reaped
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP(S)_PROXY


class DeploymentError(RuntimeError):
    """A deploy or stop that did not happen; the previous deployment is left serving."""


@dataclass(frozen=True)
class Deployment:
    environment: str
    url: str
    model_uri: str
    version: str
    pid: int
    started_at: str
    canary_version: str | None = None
    canary_share: float = 0.0
    canary_model_uri: str | None = None


class Deployer(dg.ConfigurableResource):
    """Where model versions run. Implementations: local processes, Kubernetes."""

    @abstractmethod
    def deploy(self, environment: str, model_uri: str, version: str) -> Deployment:
        """Serve ``model_uri`` as ``version`` in ``environment``; returns once it answers."""

    @abstractmethod
    def deploy_canary(
        self, environment: str, model_uri: str, version: str, share: float
    ) -> Deployment:
        """Serve ``model_uri`` as ``version`` to ``share`` (0..1) of ``environment``'s requests,
        next to the stable version; again with the same version, only the share changes."""

    @abstractmethod
    def promote_canary(self, environment: str) -> Deployment:
        """The canary becomes the stable version and takes all requests."""

    @abstractmethod
    def abort_canary(self, environment: str) -> Deployment:
        """Drop the canary: the stable version takes all requests (a no-op without a canary)."""

    @abstractmethod
    def stats(self, environment: str, window_s: float = 60.0) -> dict[str, Any]:
        """Per role (``stable``, ``canary``: None when absent) over the last ``window_s`` seconds:
        version, requests, errors (5xx), client_errors (4xx), error_rate, p50_ms, p99_ms."""

    @abstractmethod
    def status(self, environment: str) -> Deployment | None:
        """What ``environment`` serves now, or None if nothing healthy is serving."""

    @abstractmethod
    def stop(self, environment: str) -> None:
        """Stop serving ``environment``; a no-op if nothing runs."""


def _http_json(
    method: str,
    url: str,
    payload: dict | None = None,
    timeout: float = 5.0,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, decoded JSON body); a connection failure raises OSError."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        decoded = json.loads(body) if body else {}
    except ValueError:
        decoded = {"message": body[:500].decode(errors="replace")}
    return status, decoded if isinstance(decoded, dict) else {"body": decoded}


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_server_process(pid: int, state_file: Path) -> bool:
    """True if ``pid`` is alive and is the server writing ``state_file`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        try:  # no /proc (macOS)
            cmdline = subprocess.run(
                ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return _SERVER_MODULE in cmdline and str(state_file) in cmdline


def _log_tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class LocalProcessDeployer(Deployer):
    """One local serving process per environment, started detached so it outlives the run."""

    state_dir: str
    host: str = "127.0.0.1"
    ports: dict[str, int] = {}
    health_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    # The servers' admin token. Unset: each started server gets its own, in
    # <state_dir>/<environment>.admin-token (mode 0600), which this deployer reads for its calls.
    admin_token: str | None = None
    inference_log_dir: str = ""  # root of the inference logs; empty: no log
    trace_sample_rate: float = 0.01  # share of successful requests traced in MLflow

    # -- files

    def _paths(self, environment: str) -> tuple[Path, Path]:
        if not _ENVIRONMENT.match(environment):
            raise ValueError(f"invalid environment name {environment!r}")
        folder = Path(self.state_dir).resolve()
        return folder / f"{environment}.json", folder / f"{environment}.log"

    def _token_file(self, environment: str) -> Path:
        return self._paths(environment)[0].with_name(f"{environment}.admin-token")

    def _token(self, environment: str) -> str | None:
        """The admin token of the environment's server: the configured one, else its own file."""
        if self.admin_token:
            return self.admin_token
        try:
            return self._token_file(environment).read_text().strip() or None
        except OSError:
            return None

    def _new_token_file(self, environment: str) -> Path:
        """A fresh per-deployment token, readable by this user only."""
        path = self._token_file(environment)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        return path

    @staticmethod
    def _read_state(state_file: Path) -> dict[str, Any] | None:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None

    def _health(self, state: dict[str, Any], attempts: int = 1) -> dict[str, Any] | None:
        """The /health payload when the server answers 200, else None."""
        for attempt in range(attempts):
            try:
                status, body = _http_json("GET", f"{state['url']}/health", timeout=5.0)
                if status == 200:
                    return body
            except (OSError, KeyError):
                pass
            if attempt + 1 < attempts:
                time.sleep(1.0)
        return None

    @staticmethod
    def _deployment(environment: str, state: dict[str, Any], health: dict[str, Any]) -> Deployment:
        canary = health.get("canary_version")
        return Deployment(
            environment=environment,
            url=state["url"],
            model_uri=health["model_uri"],
            version=str(health["version"]),
            pid=state["pid"],
            started_at=state["started_at"],
            canary_version=str(canary) if canary is not None else None,
            canary_share=float(health.get("canary_share") or 0.0) if canary is not None else 0.0,
            canary_model_uri=health.get("canary_model_uri"),
        )

    def inference_log_path(self, environment: str, model_uri: str) -> Path | None:
        """Where the server for ``environment`` logs requests (None when logging is off)."""
        if not self.inference_log_dir:
            return None
        match = _REGISTERED_NAME.match(model_uri)
        agent = re.sub(r"[^A-Za-z0-9_.-]", "_", match.group(1)) if match else "agent"
        self._paths(environment)  # validates the name
        return Path(self.inference_log_dir).resolve() / agent / environment

    # -- the interface

    def status(self, environment: str) -> Deployment | None:
        state_file, _ = self._paths(environment)
        state = self._read_state(state_file)
        if state is None or not _is_server_process(state["pid"], state_file):
            return None
        health = self._health(state)
        return self._deployment(environment, state, health) if health else None

    def deploy(self, environment: str, model_uri: str, version: str) -> Deployment:
        version = str(version)
        state_file, log_file = self._paths(environment)
        state = self._read_state(state_file)
        if state is not None and _is_server_process(state["pid"], state_file):
            if self._health(state, attempts=3):
                payload = {"model_uri": model_uri, "version": version, "role": "stable"}  # drops a canary
                return self._admin(environment, "POST", "/admin/load", payload,
                                   f"hot swap to {model_uri} (version {version})", state=state)
            logger.warning(
                "server for %s (pid %d) is running but not healthy: replacing it",
                environment,
                state["pid"],
            )
            self.stop(environment)
        return self._start(environment, state_file, log_file, model_uri, version)

    def stop(self, environment: str) -> None:
        state_file, _ = self._paths(environment)
        state = self._read_state(state_file)
        if state is None:
            return
        pid = state["pid"]
        if _is_server_process(pid, state_file):
            self._terminate(pid)
        if (current := self._read_state(state_file)) and current["pid"] == pid:
            state_file.unlink(missing_ok=True)  # stale or left by a killed process

    def deploy_canary(
        self, environment: str, model_uri: str, version: str, share: float
    ) -> Deployment:
        if isinstance(share, bool) or not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"canary share must be in [0, 1], got {share!r}")
        payload = {
            "model_uri": model_uri,
            "version": str(version),
            "role": "canary",
            "canary_share": float(share),
        }
        return self._admin(
            environment, "POST", "/admin/load", payload, f"canary {model_uri} (version {version})"
        )

    def promote_canary(self, environment: str) -> Deployment:
        return self._admin(environment, "POST", "/admin/promote", {}, "promoting the canary")

    def abort_canary(self, environment: str) -> Deployment:
        return self._admin(environment, "POST", "/admin/abort", {}, "aborting the canary")

    def stats(self, environment: str, window_s: float = 60.0) -> dict[str, Any]:
        state = self._running(environment)
        path = f"/admin/stats?window={float(window_s):g}"
        return self._call(environment, state, "GET", path, None, "stats", timeout=5.0)

    # -- internals

    def _call(
        self, environment: str, state: dict[str, Any], method: str, path: str,
        payload: dict[str, Any] | None, what: str, timeout: float | None = None, unchanged: str = "",
    ) -> dict[str, Any]:
        """The JSON body of an admin call to the environment's server; DeploymentError naming
        ``what`` otherwise."""
        try:
            status, body = _http_json(
                method, f"{state['url']}{path}", payload,
                timeout=self.health_timeout_s if timeout is None else timeout,
                token=self._token(environment),
            )  # fmt: skip
        except OSError as e:
            raise DeploymentError(f"{environment}: {what} failed: {e}") from e
        if status != 200:
            raise DeploymentError(
                f"{environment}: {what} failed with HTTP {status}: {body.get('message', body)}"
                f"{unchanged}"
            )
        return body

    def _running(self, environment: str) -> dict[str, Any]:
        """The state of the environment's live server, or DeploymentError."""
        state_file, _ = self._paths(environment)
        state = self._read_state(state_file)
        if state is None or not _is_server_process(state["pid"], state_file):
            raise DeploymentError(
                f"{environment}: no server is running; deploy a stable version first"
            )
        return state

    def _admin(
        self, environment: str, method: str, path: str, payload: dict[str, Any], what: str,
        state: dict[str, Any] | None = None,
    ) -> Deployment:
        state = state or self._running(environment)
        body = self._call(environment, state, method, path, payload, what,
                          unchanged=f" (server pid {state['pid']} unchanged)")  # fmt: skip
        return self._deployment(environment, state, body)

    def _start(
        self, environment: str, state_file: Path, log_file: Path, model_uri: str, version: str
    ) -> Deployment:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.unlink(missing_ok=True)  # stale: its process is gone
        port = self.ports.get(environment) or 0
        command = [
            sys.executable, "-m", _SERVER_MODULE,
            "--model-uri", model_uri,
            "--version", version,
            "--environment", environment,
            "--host", self.host,
            "--port", str(port),
            "--state-file", str(state_file),
            "--trace-sample-rate", repr(float(self.trace_sample_rate)),
        ]  # fmt: skip
        if log_dir := self.inference_log_path(environment, model_uri):
            command += ["--inference-log-dir", str(log_dir)]
        env = dict(os.environ)
        env.pop(ADMIN_TOKEN_ENV, None)
        if self.admin_token:  # configured (compose): it wins
            env[ADMIN_TOKEN_ENV] = self.admin_token
        else:
            command += ["--admin-token-file", str(self._new_token_file(environment))]
        with log_file.open("ab") as log:
            log.write(f"\n=== deploy {model_uri} version {version} on port {port}\n".encode())
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        _children[process.pid] = process
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            if process.poll() is not None:
                raise DeploymentError(
                    f"{environment}: the server exited with code {process.returncode} before serving "
                    f"{model_uri} (version {version}). Log ({log_file}):\n{_log_tail(log_file, offset)}"
                )
            state = self._read_state(state_file)
            if state is not None and state["pid"] == process.pid:
                health = self._health(state)
                if health and (health.get("model_uri"), str(health.get("version"))) == (
                    model_uri,
                    version,
                ):
                    return self._deployment(environment, state, health)
            if time.monotonic() > deadline:
                self._terminate(process.pid)
                if (state := self._read_state(state_file)) and state["pid"] == process.pid:
                    state_file.unlink(missing_ok=True)
                raise DeploymentError(
                    f"{environment}: the server did not serve {model_uri} (version {version}) within "
                    f"{self.health_timeout_s:.0f}s; stopped it. Log ({log_file}):\n"
                    f"{_log_tail(log_file, offset)}"
                )
            time.sleep(0.1)

    def _terminate(self, pid: int) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; returns once the process is gone."""
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _pid_alive(pid):
                break
        else:
            raise DeploymentError(f"process {pid} did not exit after SIGKILL")
        _children.pop(pid, None)
