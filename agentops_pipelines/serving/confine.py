"""Confine a serving process before it loads any model: the model's code runs with it.

Every registered version is served in ``dev`` before anyone reviews it, and a model is code
(``load_context``, ``predict``). Without this the serving process, and so that code, could read
the audit log's MAC key and the signing keys, rewrite the audit log, Dagster's storage, the lake,
another version's artifacts or another environment's system of record. So ``main``
(``server.py``) binds its port, starts the trace exporter (the one process that writes to MLflow,
fed plain JSON it checks: ``tracing.py``), and then restricts itself for good with the sandbox's
layer (:mod:`agentops_pipelines.sandbox.landlock`, :mod:`~agentops_pipelines.sandbox.seccomp`):

- read-only: Python, this project's packages, the system files the sandbox allows, the MLflow
  store (its SQLite file: SQLite opens it read-only when a read-write open is refused) and the
  local artifact root, the agent's Feast folder and registry file, the model's own folder when
  ``--model-uri`` is a path, and ``--read`` paths;
- read-write: its own serving folder (the state file's; the local deployer gives each
  (agent, environment) one of its own), a fresh temporary folder (``TMPDIR``: MLflow downloads
  artifacts there), its inference-log folder and its system of record's folder (a SQLite file
  needs its journal beside it);
- TCP: connect only to the ports its settings name (an ``http`` MLflow, Postgres, Redis, an S3
  endpoint) and ``--connect-port`` (an LLM agent's endpoint); bind none (its socket is bound
  already). seccomp refuses Unix, UDP and raw sockets.

No folder granted may hold the state folder (``AGENTOPS_HOME``): it keeps the secrets. Where
the kernel has no Landlock the process serves ``unconfined`` (a loud log line, ``isolation`` in
``/health`` and the state file), unless ``--require-landlock`` (production): then it refuses.

Landlock and seccomp restrict the calling thread and the threads it starts later, not a thread
that already runs: a model could hand its code to such a thread (replace a callback it calls)
and run it unconfined. So :func:`apply` refuses while another Python thread runs: the serving
process starts its threads after confining itself (threads of native libraries, which run no
Python, remain: OpenBLAS's, jemalloc's).

For a test of the refusal, ``AGENTOPS_SERVING_ASSUME_NO_LANDLOCK=true`` has :func:`apply` take
the kernel for one without Landlock, but only where Landlock is required: it can make a server
refuse, never serve less confined than it would.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from agentops_pipelines.vocabulary import EnvVar

logger = logging.getLogger("agentops_pipelines.serving")

UNCONFINED = "unconfined"
ASSUME_NO_LANDLOCK = "AGENTOPS_SERVING_ASSUME_NO_LANDLOCK"  # a test's seam: see the module's docstring
#: Devices any process may write: libraries open /dev/null read-write at import (dill, which Feast
#: imports on a server's first feature lookup, opens it with ``r+b``).
WRITABLE_DEVICES = ("/dev/null",)
#: The port a URL's scheme implies when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443, "gs": 443, "wasbs": 443, "abfss": 443,
                 "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306,
                 "redis": 6379, "rediss": 6379}


class ConfinementError(RuntimeError):
    """The process cannot be confined as asked: it must not load a model."""


@dataclass(frozen=True)
class ServingPolicy:
    """What a confined serving process may touch (paths resolved, ports sorted)."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    connect_ports: tuple[int, ...]
    require_landlock: bool = False
    assume_no_landlock: bool = False  # honoured only with require_landlock: a refusal


def serving_policy(environ: Mapping[str, str], *, own_folder: Path | None, tmp: Path,
                   inference_log_dir: str = "", sor_url: str = "", model_uri: str = "",
                   read: Iterable[str] = (), connect_ports: Iterable[int] = (),
                   require_landlock: bool = False) -> ServingPolicy:
    """The policy of the serving process whose environment is ``environ``. ConfinementError
    when a folder it would get holds the state folder."""
    from agentops_pipelines.features.online import config_from_environ, default_home, is_sql_url

    home = default_home(environ)
    feast = config_from_environ(environ, home)
    readable = [*read, *_local_paths(environ.get("MLFLOW_TRACKING_URI", ""), environ.get("MLFLOW_REGISTRY_URI", ""),
                                     environ.get(EnvVar.MLFLOW_ARTIFACT_ROOT) or str(home / "mlflow" / "artifacts"),
                                     model_uri, environ.get(EnvVar.MINILM_DIR, ""))]
    for uri in {environ.get("MLFLOW_TRACKING_URI", ""), environ.get("MLFLOW_REGISTRY_URI", "")}:
        readable += artifact_locations(uri)
    readable.append(str(feast.repo_dir))
    if not is_sql_url(feast.registry) and "://" not in feast.registry:
        readable.append(feast.registry)
    writable = [str(tmp), *([str(own_folder)] if own_folder else []), *([inference_log_dir] if inference_log_dir else [])]
    if sor_url.startswith("sqlite:///"):
        writable.append(str(Path(sor_url.removeprefix("sqlite:///")).parent))
    ports = set(connect_ports)
    for url in (environ.get("MLFLOW_TRACKING_URI", ""), environ.get("MLFLOW_REGISTRY_URI", ""),
                environ.get("MLFLOW_S3_ENDPOINT_URL", ""), environ.get(EnvVar.MLFLOW_ARTIFACT_ROOT, ""),
                sor_url, feast.registry, _redis_url(feast.online_store)):
        ports |= set(_url_port(url))
    assume_no_landlock = environ.get(ASSUME_NO_LANDLOCK, "").strip().lower() in ("1", "true", "yes", "on")
    policy = ServingPolicy(tuple(sorted({_resolved(p) for p in readable if p})),
                           tuple(sorted({_resolved(p) for p in writable})), tuple(sorted(ports)), require_landlock,
                           assume_no_landlock)
    _refuse_the_state_folder(policy, Path(_resolved(str(home))))
    return policy


def artifact_locations(tracking_uri: str) -> list[str]:
    """The local artifact folders of the experiments in a local (SQLite) MLflow store: each
    experiment keeps its own (``./mlruns`` for one created without one), and any of them may hold
    a version this process is asked to load. A remote store's artifacts are reached over TCP."""
    if not tracking_uri.startswith("sqlite:///"):
        return []
    import mlflow

    experiments = mlflow.MlflowClient(tracking_uri).search_experiments(view_type=3)  # ViewType.ALL
    return _local_paths(*(e.artifact_location for e in experiments))


def private_tmp() -> Path:
    """A fresh folder for this process's temporary files (``TMPDIR``): the shared one holds other
    processes' files (the sandbox's folders, other servers' downloads)."""
    return Path(tempfile.mkdtemp(prefix="agentops-serving-"))


def apply(policy: ServingPolicy) -> str:
    """Restrict this process (and every process it starts from now on) to ``policy``; the
    isolation it got: ``landlock+seccomp``, ``landlock`` or ``unconfined``. ConfinementError
    when the policy requires Landlock (ABI 4+: files and TCP) and the kernel lacks it, or a step
    fails."""
    from agentops_pipelines import sandbox
    from agentops_pipelines.sandbox import landlock, seccomp

    _refuse_other_threads()
    if policy.assume_no_landlock and not policy.require_landlock:
        logger.warning("%s ignored: it is honoured only where Landlock is required (it may only make "
                       "a server refuse)", ASSUME_NO_LANDLOCK)
    try:
        abi = 0 if policy.assume_no_landlock and policy.require_landlock else None
        isolation = sandbox.isolation(sandbox.Policy(require_landlock=policy.require_landlock), abi)
        if isolation == sandbox.ENV_ONLY:
            logger.warning("NOT CONFINED: this kernel has no Landlock; the served model's code can read and "
                           "write every file this user can (the audit key, the signing keys, other "
                           "environments' data). Set AGENTOPS_SANDBOX_REQUIRE_LANDLOCK=true to refuse instead.")
            return UNCONFINED
        read = [*sandbox.read_paths(sandbox.Policy()), *policy.read]
        for folder in policy.write:  # a rule needs the path to exist
            Path(folder).mkdir(parents=True, exist_ok=True)
        landlock.restrict(read=read, write=[*policy.write, *WRITABLE_DEVICES], connect_ports=policy.connect_ports)
        if isolation == sandbox.LANDLOCK_SECCOMP:
            seccomp.install()
    except (sandbox.SandboxError, landlock.LandlockError, seccomp.SeccompError) as e:
        raise ConfinementError(str(e)) from None
    logger.info("confined (%s): writes %s; TCP to ports %s", isolation, ", ".join(policy.write),
                ", ".join(map(str, policy.connect_ports)) or "none")
    return isolation


def _refuse_other_threads() -> None:
    """ConfinementError while a Python thread besides this one runs: it would stay unconfined."""
    import threading

    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        raise ConfinementError(f"threads started before confinement would stay unconfined: {', '.join(others)}; "
                               f"start them after confining the process")


def _refuse_the_state_folder(policy: ServingPolicy, home: Path) -> None:
    for path in (*policy.read, *policy.write):
        if home.is_relative_to(path):
            raise ConfinementError(f"{path} holds the state folder {home} (its secrets, the audit log): a served "
                                   f"model must not reach it; give each store a folder of its own")


def _local_paths(*values: str) -> list[str]:
    """The local files among URIs and paths (``sqlite:///x.db``, ``file:///a``, ``/a``)."""
    paths = []
    for value in filter(None, values):
        if value.startswith("sqlite:///"):
            paths.append(value.removeprefix("sqlite:///").split("?", 1)[0])
        elif value.startswith("file://"):
            paths.append(urlparse(value).path)
        elif "://" not in value and not value.startswith(("models:", "runs:")):
            paths.append(value)
    return paths


def _url_port(url: str) -> list[int]:
    if "://" not in url:
        return []
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme in ("sqlite", "file"):
        return []
    try:
        port = parsed.port
    except ValueError:
        return []
    port = port or DEFAULT_PORTS.get(scheme)
    return [port] if port else []


def _redis_url(online_store: str) -> str:
    """Feast's Redis ``host:port,...`` as a URL (empty for SQLite)."""
    if online_store == "sqlite" or "://" in online_store:
        return online_store if "://" in online_store else ""
    return f"redis://{online_store.split(',', 1)[0]}"


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())
