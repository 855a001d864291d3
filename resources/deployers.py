"""Deployers: put model versions behind the serving endpoint of an environment.

``Deployer`` is the interface the deployment assets use: ``deploy`` is a full rollout of a stable
version (any canary is dropped); ``deploy_canary`` sends a share of the traffic (sticky per
customer) to a second version next to the stable one; ``promote_canary`` makes it the stable
version; ``abort_canary`` drops it; ``stats`` reports requests, errors and latency per role over a
recent window (the server's ``GET /admin/stats``), for bake-time health checks.

``LocalProcessDeployer`` runs ``python -m agentops_pipelines.serving`` once per agent and
environment (the agent is the registered model's name in ``models:/<agent>/...``), under a small
supervisor (``agentops_pipelines.serving.supervisor``) started detached so it outlives the run:
the supervisor restarts a server that dies on the same port (with backoff; a crash loop stops
it), and the server dies with the supervisor. Everything for one (agent, environment) lives in
its own folder ``<state_dir>/<agent>/<environment>/`` (the only one of them its confined server
may write, serving/confine.py): ``state.json`` (the server's state file, written by the server),
``serving.log`` (both processes' output), ``supervisor.json`` (restarts and status, written by
the supervisor), ``admin-token`` and ``port``: the port, chosen once (outside the
OS's ephemeral range) and kept, so restarts and redeploys never move the URL; an entry in
``ports`` (``"<agent>/<environment>"``, or ``"<environment>"`` for the deployer's own ``agent``)
wins. A deploy to a healthy running server hot-swaps the model through ``POST /admin/load`` (same
process, same port); otherwise a new process starts. Canary operations need a running server
(deploy a stable version first). Calls that name only an environment act on the one agent
serving there, and refuse when several do (the pipeline always names the agent; the resource's
``agent`` field is for a deployer of one agent, e.g. in a test). A server started by an older version of this deployer
(``<state_dir>/<environment>.json``) is still reported and stopped, and the next deploy replaces
it by a supervised one on the same port; so does a deploy to a server whose files are in the
agent's folder (``<state_dir>/<agent>/<environment>.json``, before each had its own folder).

Serving processes get an explicit environment (:func:`serving_environment`), never the
deployer's: no database password, audit-log URL or other secret of the code location reaches
them. A secret one agent needs is passed to that agent's processes only (``agent_secret_env``:
the LLM key goes to the agents that declare an LLM endpoint, by name, never logged). With ``inference_log_dir`` set, the server appends every request to
``<inference_log_dir>/<agent>/<environment>/``; ``trace_sample_rate`` is the share of requests
traced in MLflow (failed ones always are). Both apply when a process starts, not to a hot swap.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from agentops_pipelines.sandbox import PROCESS_ENV_NAMES, PROCESS_ENV_PREFIXES
from agentops_pipelines.vocabulary import EnvVar, pinned_version, sor_url

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = EnvVar.SERVING_ADMIN_TOKEN.value  # read by the serving process (serving/server.py)
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SERVER_MODULE = "agentops_pipelines.serving"
_SUPERVISOR_MODULE = "agentops_pipelines.serving.supervisor"
_REGISTERED_NAME = re.compile(r"^models:/([^/@]+)")
_children: dict[int, subprocess.Popen] = {}  # processes started here, so they can be reaped
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP(S)_PROXY


class DeploymentError(RuntimeError):
    """A deploy or stop that did not happen; the previous deployment is left serving."""


def pinned(model_uri: str, version: str | int) -> str:
    """``version`` as the label of ``model_uri``, which must pin it (``models:/<agent>/<version>``,
    ``vocabulary.pinned_version``): refused before anything starts or is applied, so no deployer
    serves an alias or reports one version under another's number. DeploymentError otherwise."""
    try:
        return pinned_version(model_uri, str(version))
    except ValueError as e:
        raise DeploymentError(str(e)) from None


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
    agent: str = ""  # the agent whose serving process (local) or pods (Kubernetes) this is
    restarts: int = 0  # local deployer: restarts of the serving process by its supervisor


class Deployer(dg.ConfigurableResource):
    """Where model versions run. Implementations: local processes, Kubernetes.

    One resource serves every agent of the code location. ``deploy`` and ``deploy_canary`` take
    the agent from ``model_uri`` (``models:/<agent>/<version>``); every other call names it with
    ``agent=``. The pipeline always does (the lifecycle that calls knows its agent); ``agent=None``
    is for a person or a test with one agent, and resolves only when exactly one agent serves in
    that environment: a deployer never picks an agent for a caller that has several.
    """

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
    def promote_canary(self, environment: str, agent: str | None = None) -> Deployment:
        """The canary becomes the stable version and takes all requests."""

    @abstractmethod
    def abort_canary(self, environment: str, agent: str | None = None) -> Deployment:
        """Drop the canary: the stable version takes all requests (a no-op without a canary)."""

    @abstractmethod
    def stats(self, environment: str, window_s: float = 60.0, agent: str | None = None) -> dict[str, Any]:
        """Per role (``stable``, ``canary``: None when absent) over the last ``window_s`` seconds:
        version, requests, errors (5xx), client_errors (4xx), error_rate, p50_ms, p99_ms."""

    @abstractmethod
    def status(self, environment: str, agent: str | None = None) -> Deployment | None:
        """What ``agent`` serves in ``environment`` now, or None if nothing healthy is serving."""

    @abstractmethod
    def stop(self, environment: str, agent: str | None = None) -> None:
        """Stop serving ``agent`` in ``environment``; a no-op if nothing runs."""


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


# -- the serving processes' environment

# Variables a serving process may receive from the deployer's environment, by exact name or
# prefix: any child process's basics (PROCESS_ENV_NAMES: what a sandboxed model gets), what
# Python needs to start and import, certificates, proxies, MLflow (its
# tracking URI, credentials and artifact-store settings), the Feast settings the model's online
# lookups read (agentops_pipelines.agent.model), the embedding weights, the serving role. Not
# AGENTOPS_MODE: in production mode load_settings() wants the code location's database settings,
# which a serving process must not get; the variables it does get work on their own.
SERVING_ENV_NAMES = PROCESS_ENV_NAMES | frozenset({
    "HOME", "USER", "LOGNAME", "TMPDIR", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCESS_KEY",  # MLflow artifact stores other than S3 (AWS_*)
    EnvVar.HOME.value, EnvVar.MLFLOW_ARTIFACT_ROOT.value, EnvVar.FEAST_DIR.value, EnvVar.FEAST_REDIS.value,
    EnvVar.FEAST_REGISTRY.value, EnvVar.FEAST_PROJECT.value, EnvVar.MINILM_DIR.value,
    EnvVar.SERVING_ROLE.value, "FEAST_USAGE",
    EnvVar.REFUND_LIMIT.value, EnvVar.ONLINE_EVAL_SAMPLE_RATE.value,
})  # fmt: skip
# Not the system-of-record URLs (AGENTOPS_SOR_URL and AGENTOPS_SOR_URL_<ENVIRONMENT>): a process
# gets its own environment's only, from vocabulary.sor_url (a dev process never holds prod's).
SERVING_ENV_PREFIXES = (*PROCESS_ENV_PREFIXES, "PYTHON", "MLFLOW_", "AWS_")
SERVING_ENV_EXCLUDED = frozenset({"MLFLOW_BACKEND_STORE_URI"})  # the MLflow server's, not a client's


def serving_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``source`` a serving process gets (see ``SERVING_ENV_NAMES``)."""
    return {
        name: value
        for name, value in source.items()
        if name not in SERVING_ENV_EXCLUDED
        and (name in SERVING_ENV_NAMES or name.startswith(SERVING_ENV_PREFIXES))
    }


def agent_serving_environment(source: Mapping[str, str], agent: str) -> dict[str, str]:
    """The Feast variables naming ``agent``'s own feature store (project ``<project>_<agent>``,
    its folder and file registry), so a served model reads its agent's features, never another's."""
    from agentops_pipelines.features.online import agent_environ

    return agent_environ(source, agent)


def serving_admin_token(configured: str, agent: str, environment: str) -> str:
    """The admin token of one (agent, environment)'s serving process when one token is configured
    (AGENTOPS_SERVING_ADMIN_TOKEN): an HMAC of the agent and environment under it. Each process
    holds only its own, so a token that leaks from one (a dev process running a version nobody
    approved yet, say) opens no other agent's or environment's /admin/*, as on Kubernetes."""
    message = f"agentops-serving-admin\0{agent}\0{environment}".encode()
    return hmac.new(configured.encode(), message, "sha256").hexdigest()


def agent_secrets(source: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The variables ``names`` of ``source`` that are set: secrets one agent's serving processes
    get besides the allowlist (an LLM agent's key, ``AGENTOPS_LLM_API_KEY``), never another's."""
    return {name: source[name] for name in names if source.get(name)}


def _argv(pid: int) -> list[str] | None:
    """The command line of ``pid``; None if it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except OSError:
        try:  # no /proc (macOS): words, good enough to recognise our own processes
            out = subprocess.run(
                ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.split() or None


def _runs_module(pid: int, module: str, path: Path) -> bool:
    """True if ``pid`` is alive and runs ``python -m module`` with ``path`` among its arguments
    (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    argv = _argv(pid)
    return bool(argv) and argv[1:3] == ["-m", module] and str(path) in argv


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
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_server_process(pid: int, state_file: Path) -> bool:
    """True if ``pid`` is alive and is the server writing ``state_file``."""
    return _runs_module(pid, _SERVER_MODULE, state_file)


def _is_supervisor(pid: int, supervision_file: Path) -> bool:
    return _runs_module(pid, _SUPERVISOR_MODULE, supervision_file)


def _log_tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _agent_folder(agent: str) -> str:
    """An agent's name as a folder name (``support_agent`` stays as it is)."""
    name = _SAFE_NAME.sub("_", agent)
    if not name or name in (".", ".."):
        raise ValueError(f"invalid agent name {agent!r}")
    return name


def _local_port_range() -> tuple[int, int]:
    """The OS's ephemeral port range (Linux), where outgoing connections take their ports."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535  # IANA's; macOS uses it


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ServingFiles:
    """Where one (agent, environment) keeps its files, all in ``<state_dir>/<agent>/<environment>/``."""

    agent: str
    environment: str
    state: Path  # written by the server: pid, url, versions
    log: Path  # the supervisor's and the server's output
    supervision: Path  # written by the supervisor: restarts, status
    port: Path  # the stable port, chosen once


class LocalProcessDeployer(Deployer):
    """One supervised local serving process per agent and environment, on a stable port."""

    state_dir: str
    # The agent of calls that name none, for a deployer of one agent (a test, a script). The code
    # location leaves it empty: one resource serves all agents, each call names its agent.
    agent: str = ""
    host: str = "127.0.0.1"
    # "<agent>/<environment>" -> port; "<environment>" only with ``agent`` set (that agent's port)
    ports: dict[str, int] = {}
    health_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    # The servers' admin token. Unset: each started server gets its own, in
    # <state_dir>/<agent>/<environment>.admin-token (mode 0600), which this deployer reads for its calls.
    # Set (AGENTOPS_SERVING_ADMIN_TOKEN): each (agent, environment) gets a token derived from it
    # (serving_admin_token), never the configured one itself.
    admin_token: str | None = None
    inference_log_dir: str = ""  # root of the inference logs; empty: no log
    # The MLflow store the servers load models from and trace to (settings' tracking URI). Empty:
    # whatever MLFLOW_TRACKING_URI this process has (a test or script that set it itself).
    mlflow_tracking_uri: str = ""
    trace_sample_rate: float = 0.01  # share of successful requests traced in MLflow
    max_restarts: int = 5  # more restarts than this within restart_window_s is a crash loop
    restart_window_s: float = 300.0
    restart_backoff_s: float = 0.5  # the first restart's delay; doubles while restarts fail fast
    restart_backoff_max_s: float = 30.0
    # agent -> names of variables only its serving processes get, besides the allowlist: the key
    # of the LLM endpoint an agent declares (definitions.py fills it from the agents). Names only:
    # the values stay in this process's environment and are read when a process starts.
    agent_secret_env: dict[str, list[str]] = {}
    # agent -> TCP ports its confined serving processes may connect to besides their stores' (an
    # LLM agent's endpoint; definitions.py fills it from the agents). serving/confine.py.
    agent_connect_ports: dict[str, list[int]] = {}
    # Refuse to serve where the kernel has no Landlock instead of serving unconfined (production).
    require_landlock: bool = False

    # -- files

    def _root(self) -> Path:
        return Path(self.state_dir).resolve()

    def _validate(self, environment: str) -> None:
        if not _ENVIRONMENT.match(environment):
            raise ValueError(f"invalid environment name {environment!r}")

    def files(self, environment: str, agent: str | None = None) -> ServingFiles:
        """The files of ``agent`` (default: this deployer's) in ``environment``."""
        self._validate(environment)
        name = _agent_folder(agent or self.agent or "agent")
        folder = self._root() / name / environment
        return ServingFiles(
            agent=name, environment=environment, state=folder / "state.json", log=folder / "serving.log",
            supervision=folder / "supervisor.json", port=folder / "port",
        )  # fmt: skip

    def _agent_of(self, model_uri: str) -> str:
        match = _REGISTERED_NAME.match(model_uri)
        return _agent_folder(match.group(1)) if match else _agent_folder(self.agent or "agent")

    def _legacy_file(self, environment: str) -> Path:
        """Where a server started by the environment-only deployer kept its state."""
        return self._root() / f"{environment}.json"

    def _legacy_state(self, agent: str, environment: str) -> dict[str, Any] | None:
        state = self._read_state(self._legacy_file(environment))
        if state is None or self._agent_of(str(state.get("model_uri", ""))) != agent:
            return None
        return state

    def _resolve(self, environment: str, agent: str | None) -> ServingFiles | None:
        """The files for a call naming only ``environment``: ``agent``, this deployer's agent, or
        the one agent with files there (None if there is none)."""
        self._validate(environment)
        if agent or self.agent:
            return self.files(environment, agent)
        root = self._root()
        found = {p.parent.parent.name for pattern in (f"*/{environment}/state.json", f"*/{environment}/supervisor.json")
                 for p in root.glob(pattern)}
        legacy = self._read_state(self._legacy_file(environment))
        if legacy is not None:
            found.add(self._agent_of(str(legacy.get("model_uri", ""))))
        if len(found) > 1:
            raise DeploymentError(f"{environment}: several agents serve here ({', '.join(sorted(found))}): "
                                  "name one (agent=...)")
        return self.files(environment, found.pop()) if found else None

    @staticmethod
    def _token_file(files: ServingFiles) -> Path:
        return files.state.with_name("admin-token")

    def _token(self, environment: str, state: dict[str, Any]) -> str | None:
        """The admin token of the server whose ``state`` this is: the configured one, else the
        file of its (agent, environment)."""
        files = self.files(environment, self._agent_of(str(state.get("model_uri", ""))))
        if self.admin_token:
            return serving_admin_token(self.admin_token, files.agent, files.environment)
        try:
            return self._token_file(files).read_text().strip() or None
        except OSError:
            return None

    def _new_token_file(self, files: ServingFiles) -> Path:
        """A fresh per-deployment token, readable by this user only."""
        path = self._token_file(files)
        path.parent.mkdir(parents=True, exist_ok=True)
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

    @staticmethod
    def _read_supervision(files: ServingFiles) -> dict[str, Any] | None:
        try:
            record = json.loads(files.supervision.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _supervisor_pid(self, files: ServingFiles) -> int | None:
        """The pid of the live supervisor of ``files``, if there is one."""
        record = self._read_supervision(files) or {}
        pid = record.get("supervisor_pid")
        return pid if isinstance(pid, int) and _is_supervisor(pid, files.supervision) else None

    def _server_state(self, files: ServingFiles) -> dict[str, Any] | None:
        """The state of the live server of ``files`` (or of a server started before servers
        were kept per agent), else None."""
        state = self._read_state(files.state)
        if state is not None and _is_server_process(state["pid"], files.state):
            return state
        legacy = self._legacy_state(files.agent, files.environment)
        if legacy is not None and _is_server_process(legacy["pid"], self._legacy_file(files.environment)):
            return legacy
        return None

    # -- the stable port

    def _explicit_port(self, files: ServingFiles) -> int | None:
        port = self.ports.get(f"{files.agent}/{files.environment}")
        # A port named by environment alone belongs to this deployer's own agent, never to any
        # agent: two agents given the same port would take each other's traffic.
        if port is None and self.agent and files.agent == _agent_folder(self.agent):
            port = self.ports.get(files.environment)
        return port or None

    @staticmethod
    def _read_port(path: Path) -> int | None:
        try:
            port = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def port(self, environment: str, agent: str | None = None) -> int:
        """The port ``agent`` serves ``environment`` on: ``ports``, or the one chosen at its first
        deploy and kept in ``<environment>.port``, or a new one (chosen now and kept)."""
        files = self.files(environment, agent)
        explicit = self._explicit_port(files)
        if explicit:
            return explicit
        kept = self._read_port(files.port)
        if kept:
            return kept
        taken = {p for p in map(self._read_port, self._root().glob("*/*/port")) if p}
        taken |= set(self.ports.values())
        low, _ = _local_port_range()
        # below the ephemeral range: no outgoing connection takes the port while it is free
        candidates = range(20000, low) if low > 21000 else range(1024, 65536)
        for _ in range(200):
            port = random.choice(candidates)
            if port not in taken and _can_bind(self.host, port):
                break
        else:
            raise DeploymentError(f"{environment}: no free port found for {files.agent}")
        files.port.parent.mkdir(parents=True, exist_ok=True)
        try:
            with files.port.open("x") as f:  # two deploys at once: the first one wins
                f.write(f"{port}\n")
        except FileExistsError:
            return self._read_port(files.port) or port
        return port

    # -- health

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

    def _deployment(self, files: ServingFiles, state: dict[str, Any], health: dict[str, Any]) -> Deployment:
        canary = health.get("canary_version")
        record = self._read_supervision(files) or {}
        restarts = record.get("restarts") if record.get("server_pid") == state["pid"] else 0
        return Deployment(
            environment=files.environment,
            url=state["url"],
            model_uri=health["model_uri"],
            version=str(health["version"]),
            pid=state["pid"],
            started_at=state["started_at"],
            canary_version=str(canary) if canary is not None else None,
            canary_share=float(health.get("canary_share") or 0.0) if canary is not None else 0.0,
            canary_model_uri=health.get("canary_model_uri"),
            agent=files.agent,
            restarts=restarts if isinstance(restarts, int) else 0,
        )

    def inference_log_path(self, environment: str, model_uri: str) -> Path | None:
        """Where the server for ``environment`` logs requests (None when logging is off)."""
        if not self.inference_log_dir:
            return None
        self._validate(environment)
        return Path(self.inference_log_dir).resolve() / self._agent_of(model_uri) / environment

    # -- the interface

    def status(self, environment: str, agent: str | None = None) -> Deployment | None:
        files = self._resolve(environment, agent)
        state = self._server_state(files) if files else None
        if state is None:
            return None
        health = self._health(state)
        return self._deployment(files, state, health) if health else None

    def supervision(self, environment: str, agent: str | None = None) -> dict[str, Any] | None:
        """What the supervisor of ``environment`` last recorded (status: starting, serving,
        restarting, crash_loop, failed, stopped; restarts; last_exit), with ``alive`` (the
        supervisor runs) and ``log``; None if nothing was ever supervised there."""
        files = self._resolve(environment, agent)
        record = self._read_supervision(files) if files else None
        if record is None:
            return None
        return {**record, "alive": self._supervisor_pid(files) is not None, "log": str(files.log)}

    def deploy(self, environment: str, model_uri: str, version: str) -> Deployment:
        version = pinned(model_uri, version)
        files = self.files(environment, self._agent_of(model_uri))
        self._migrate(files)
        state = self._server_state(files)
        if state is not None:
            supervised = self._supervisor_pid(files) is not None
            if supervised and self._health(state, attempts=3):
                payload = {"model_uri": model_uri, "version": version, "role": "stable"}  # drops a canary
                return self._admin(files, "POST", "/admin/load", payload,
                                   f"hot swap to {model_uri} (version {version})", state=state)
            logger.warning(
                "server for %s in %s (pid %d) is running %s: replacing it",
                files.agent, environment, state["pid"],
                "but not healthy" if supervised else "without a supervisor",
            )  # fmt: skip
        self._stop(files)
        return self._start(environment, files, model_uri, version)

    def stop(self, environment: str, agent: str | None = None) -> None:
        files = self._resolve(environment, agent)
        if files is not None:
            self._stop(files)

    def deploy_canary(
        self, environment: str, model_uri: str, version: str, share: float
    ) -> Deployment:
        if isinstance(share, bool) or not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"canary share must be in [0, 1], got {share!r}")
        payload = {
            "model_uri": model_uri,
            "version": pinned(model_uri, version),
            "role": "canary",
            "canary_share": float(share),
        }
        files = self.files(environment, self._agent_of(model_uri))
        return self._admin(files, "POST", "/admin/load", payload, f"canary {model_uri} (version {version})")

    def promote_canary(self, environment: str, agent: str | None = None) -> Deployment:
        return self._admin(self._resolve(environment, agent), "POST", "/admin/promote", {},
                           "promoting the canary", environment=environment)  # fmt: skip

    def abort_canary(self, environment: str, agent: str | None = None) -> Deployment:
        return self._admin(self._resolve(environment, agent), "POST", "/admin/abort", {},
                           "aborting the canary", environment=environment)  # fmt: skip

    def stats(self, environment: str, window_s: float = 60.0, agent: str | None = None) -> dict[str, Any]:
        state = self._running(self._resolve(environment, agent), environment)
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
                token=self._token(environment, state),
            )  # fmt: skip
        except OSError as e:
            raise DeploymentError(f"{environment}: {what} failed: {e}") from e
        if status != 200:
            raise DeploymentError(
                f"{environment}: {what} failed with HTTP {status}: {body.get('message', body)}"
                f"{unchanged}"
            )
        return body

    def _running(self, files: ServingFiles | None, environment: str) -> dict[str, Any]:
        """The state of the live server of ``files``, or DeploymentError."""
        state = self._server_state(files) if files is not None else None
        if state is None:
            raise DeploymentError(
                f"{environment}: no server is running; deploy a stable version first"
            )
        return state

    def _admin(
        self, files: ServingFiles | None, method: str, path: str, payload: dict[str, Any], what: str,
        state: dict[str, Any] | None = None, environment: str = "",
    ) -> Deployment:
        environment = files.environment if files else environment
        state = state or self._running(files, environment)
        body = self._call(environment, state, method, path, payload, what,
                          unchanged=f" (server pid {state['pid']} unchanged)")  # fmt: skip
        return self._deployment(files, state, body)

    def _migrate(self, files: ServingFiles) -> None:
        """Replace a server started before servers were kept per agent (``<environment>.json`` in
        the state folder) or before each (agent, environment) had a folder of its own: its port
        becomes the stable port, it stops, the deploy starts a supervised one."""
        self._migrate_agent_folder(files)
        legacy_file = self._legacy_file(files.environment)
        legacy = self._legacy_state(files.agent, files.environment)
        if legacy is None:
            return
        if isinstance(legacy.get("port"), int) and not files.port.exists():
            files.port.parent.mkdir(parents=True, exist_ok=True)
            files.port.write_text(f"{legacy['port']}\n")
        if _is_server_process(legacy["pid"], legacy_file):
            logger.info("%s: replacing server pid %d (%s) by a supervised one on port %s",
                        files.environment, legacy["pid"], legacy_file, legacy.get("port"))
            self._terminate(legacy["pid"])
        legacy_file.unlink(missing_ok=True)

    def _migrate_agent_folder(self, files: ServingFiles) -> None:
        """Files of ``files``' (agent, environment) left directly in the agent's folder
        (``<environment>.json``, ``.supervisor.json``, ``.port``, ``.admin-token``): the port moves
        to the new folder, the supervisor and the server stop, the rest is removed (the log stays)."""
        old = files.state.parent.parent
        port, supervision, state = (old / f"{files.environment}{suffix}"
                                    for suffix in (".port", ".supervisor.json", ".json"))
        if port.exists() and not files.port.exists():
            files.port.parent.mkdir(parents=True, exist_ok=True)
            port.rename(files.port)
        try:
            pid = json.loads(supervision.read_text()).get("supervisor_pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        if isinstance(pid, int) and _is_supervisor(pid, supervision):
            self._terminate(pid, self.stop_timeout_s + 5.0)
        server = self._read_state(state)
        if server is not None and _is_server_process(server["pid"], state):
            self._terminate(server["pid"])
        for path in (port, supervision, state, old / f"{files.environment}.admin-token"):
            path.unlink(missing_ok=True)

    def _stop(self, files: ServingFiles) -> None:
        """Stop the supervisor (it stops the server), then any server left (one from before
        supervision, or one whose supervisor was killed), and remove stale state."""
        supervisor = self._supervisor_pid(files)
        if supervisor is not None:
            self._terminate(supervisor, self.stop_timeout_s + 5.0)
        for state_file in (files.state, self._legacy_file(files.environment)):
            state = self._read_state(state_file)
            if state is None or (state_file != files.state
                                 and self._legacy_state(files.agent, files.environment) is None):
                continue
            if _is_server_process(state["pid"], state_file):
                self._terminate(state["pid"])
            if (current := self._read_state(state_file)) and current["pid"] == state["pid"]:
                state_file.unlink(missing_ok=True)  # stale or left by a killed process

    def _start(
        self, environment: str, files: ServingFiles, model_uri: str, version: str
    ) -> Deployment:
        state_file = files.state
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.unlink(missing_ok=True)  # stale: its process is gone
        port = self.port(environment, files.agent)
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
        for port in self.agent_connect_ports.get(files.agent, ()):
            command += ["--connect-port", str(int(port))]
        if self.require_landlock:
            command.append("--require-landlock")
        env = self.process_environment(files.agent, os.environ, environment)
        if self.admin_token:  # configured (compose): it wins, as this server's own derived token
            env[ADMIN_TOKEN_ENV] = serving_admin_token(self.admin_token, files.agent, files.environment)
        else:  # a fresh token per deployment, in a file only this user reads
            command += ["--admin-token-file", str(self._new_token_file(files))]
        return self._supervise(files, command, env, model_uri, version, port)

    def process_environment(self, agent: str, source: Mapping[str, str], environment: str) -> dict[str, str]:
        """What ``agent``'s serving process in ``environment`` gets from ``source`` (this
        process's environment): the allowlist, the agent's own Feast settings and secrets, this
        deployer's MLflow store, ``environment``'s system of record as ``AGENTOPS_SOR_URL`` (the
        one variable the server reads; no other environment's URL); never the parent's admin
        token (a configured one is added by the caller)."""
        self._validate(environment)
        env = serving_environment(source)
        from agentops_pipelines.features.online import default_home

        env[EnvVar.SOR_URL.value] = sor_url(environment, source, default_home(source))
        env.update(agent_serving_environment(env, agent))
        env.update(agent_secrets(source, self.agent_secret_env.get(agent, ())))
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        env.pop(ADMIN_TOKEN_ENV, None)
        return env

    def _supervisor_command(self, files: ServingFiles, command: list[str]) -> list[str]:
        return [
            sys.executable, "-m", _SUPERVISOR_MODULE,
            "--state-file", str(files.state),
            "--supervision-file", str(files.supervision),
            "--max-restarts", str(self.max_restarts),
            "--restart-window-s", repr(float(self.restart_window_s)),
            "--backoff-s", repr(float(self.restart_backoff_s)),
            "--backoff-max-s", repr(float(self.restart_backoff_max_s)),
            "--stop-timeout-s", repr(float(self.stop_timeout_s)),
            "--", *command,
        ]  # fmt: skip

    def _supervise(
        self, files: ServingFiles, command: list[str], env: dict[str, str], model_uri: str,
        version: str, port: int,
    ) -> Deployment:
        """Start the supervisor running ``command`` and wait until the server serves
        ``model_uri`` (``version``); DeploymentError with the log's tail otherwise."""
        environment, log_file = files.environment, files.log
        files.supervision.unlink(missing_ok=True)  # its supervisor is gone (stopped above)
        with log_file.open("ab") as log:
            log.write(f"\n=== deploy {model_uri} version {version} on port {port}\n".encode())
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                self._supervisor_command(files, command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives the run that deployed it
                close_fds=True,
            )
        _children[process.pid] = process
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            if process.poll() is not None:
                _children.pop(process.pid, None)
                raise DeploymentError(
                    f"{environment}: the server exited with code {process.returncode} before serving "
                    f"{model_uri} (version {version}). Log ({log_file}):\n{_log_tail(log_file, offset)}"
                )
            state = self._read_state(files.state)
            if state is not None and _is_server_process(state["pid"], files.state):
                health = self._health(state)
                if health and (health.get("model_uri"), str(health.get("version"))) == (
                    model_uri,
                    version,
                ):
                    self._await_supervisor(files, state["pid"])
                    return self._deployment(files, state, health)
            if time.monotonic() > deadline:
                self._terminate(process.pid, self.stop_timeout_s + 5.0)
                if (state := self._read_state(files.state)) and not _pid_alive(state["pid"]):
                    files.state.unlink(missing_ok=True)
                raise DeploymentError(
                    f"{environment}: the server did not serve {model_uri} (version {version}) within "
                    f"{self.health_timeout_s:.0f}s; stopped it. Log ({log_file}):\n"
                    f"{_log_tail(log_file, offset)}"
                )
            time.sleep(0.1)

    def _await_supervisor(self, files: ServingFiles, server_pid: int, timeout_s: float = 5.0) -> None:
        """Wait (briefly) until the supervisor has seen the server serve: from then on it
        restarts the server if it dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self._read_supervision(files) or {}
            if record.get("server_pid") == server_pid and record.get("status") == "serving":
                return
            time.sleep(0.02)
        logger.warning("%s: the supervisor has not recorded server pid %d as serving",
                       files.environment, server_pid)

    def _terminate(self, pid: int, wait_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``wait_s`` (default ``stop_timeout_s``); returns once the
        process is gone."""
        first = self.stop_timeout_s if wait_s is None else wait_s
        for sig, wait in ((signal.SIGTERM, first), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _pid_alive(pid):
                break
        else:
            raise DeploymentError(f"process {pid} did not exit after SIGKILL")
        _children.pop(pid, None)
