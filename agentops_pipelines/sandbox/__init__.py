"""Run a candidate's model code where the code location's secrets cannot be read.

An MLflow model is code: loading ``runs:/<id>/agent`` runs whatever its author wrote, and the
``mlflow_run_sensor`` evaluates any finished run that logged an agent. In the Dagster run process
that code could read the audit log's MAC key, the Dagster and system-of-record passwords and the
MLflow store, and forge an approval or a gate. So the model runs in a child process instead:

- the parent downloads the model's artifacts (no model code runs) into a fresh folder;
- the child gets an explicit, minimal environment (:func:`child_environment`: no MLflow URI, no
  ``AGENTOPS_AUDIT_*``, no passwords, no system-of-record URLs) and, before the model is loaded,
  restricts itself with Landlock (:mod:`.landlock`: read-only Python, this project's packages and
  a few system files; read-write only its folder; TCP connect only to ``connect_ports``, e.g. an
  LLM agent's endpoint) and seccomp (:mod:`.seccomp`: no Unix, UDP or raw sockets);
- it answers with one JSON document the parent parses strictly (:func:`classify`, :func:`route`),
  within a time and a size limit. A crash, a timeout or garbage is a :class:`SandboxError`.

Where Landlock is missing the child runs with the scrubbed environment only (``env-only``),
loudly; ``Policy.require_landlock`` (on in production) refuses that instead. What is left: the
child has this user's uid, and on Kubernetes the run pod still mounts the audit key (README,
"Where model code runs").
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ENV_ONLY, LANDLOCK, LANDLOCK_SECCOMP = "env-only", "landlock", "landlock+seccomp"
#: Variables any child process may get from its parent (by name, or ``LC_*``): what a process
#: needs to start, find programs and format text. Serving processes get these and more
#: (resources/deployers.py); a sandboxed model gets these and what its policy names.
PROCESS_ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "MKL_NUM_THREADS"})
PROCESS_ENV_PREFIXES = ("LC_",)
#: System files Python, NumPy, MLflow and SSL read (read-only); the rest of /etc is not readable.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ssl", "/etc/ca-certificates",
               "/etc/pki", "/etc/localtime", "/etc/locale.alias", "/etc/mime.types", "/etc/ld.so.cache",
               "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/passwd",
               "/etc/group", "/dev/urandom", "/dev/random", "/dev/null", "/proc/self", "/proc/cpuinfo",
               "/proc/meminfo", "/sys/devices/system/cpu", "/sys/fs/cgroup")
PACKAGES = ("agentops_pipelines", "agentops_pipelines.assets", "agentops_pipelines.resources",
            "agentops_pipelines.sensors")
MAX_TOOL_CHARS = 200
MAX_USAGE_KEYS = 32


class SandboxError(RuntimeError):
    """The sandboxed model failed, timed out, answered garbage, or could not be confined."""


@dataclass(frozen=True)
class Policy:
    """How a model runs. ``connect_ports``: TCP ports it may connect to (any host: Landlock knows
    ports only); ``pass_env``: variables it gets by name (an LLM endpoint's key); ``read``: extra
    read-only paths (the MiniLM weights' folder)."""

    require_landlock: bool = False
    connect_ports: tuple[int, ...] = ()
    pass_env: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()  # never readable (the state folder, the audit key): checked, not assumed
    timeout_s: float = 1800.0
    max_answer_bytes: int = 64 << 20


def isolation(policy: Policy, abi: int | None = None) -> str:
    """What the child will be confined by on this machine (its Landlock ABI, unless ``abi`` says
    it has less); a :class:`SandboxError` when the policy requires Landlock and the kernel has none."""
    from agentops_pipelines.sandbox import landlock, seccomp

    abi = landlock.abi_version() if abi is None else min(abi, landlock.abi_version())
    if abi < 1:
        if policy.require_landlock:
            raise SandboxError("this kernel has no Landlock and the sandbox policy requires it "
                               "(AGENTOPS_SANDBOX_REQUIRE_LANDLOCK): refusing to run model code")
        log.warning("NO LANDLOCK on this kernel: model code runs with a scrubbed environment only "
                    "and can read every file this user can (the audit key included)")
        return ENV_ONLY
    if abi < 4:
        if policy.require_landlock:
            raise SandboxError(f"Landlock ABI {abi} cannot restrict TCP (ABI 4+, Linux 6.7): refusing to run model code")
        log.warning("Landlock ABI %d restricts files but not TCP: model code may connect to any port", abi)
    return LANDLOCK_SECCOMP if seccomp.supported() else LANDLOCK


def child_environment(source: Mapping[str, str], workdir: Path, pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The child's whole environment: the process basics, its folder as HOME and TMPDIR, and the
    variables the policy names. Nothing else of ``source`` (secrets, service URLs) gets through."""
    env = {k: v for k, v in source.items() if k in PROCESS_ENV_NAMES or k.startswith(PROCESS_ENV_PREFIXES)}
    env |= {name: source[name] for name in pass_env if name in source}
    return env | {"HOME": str(workdir), "TMPDIR": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}


def read_paths(policy: Policy) -> list[str]:
    """What the child may read: Python, this project's packages (not the project root: it holds
    the state folder with the secrets), the system files in ``SYSTEM_READ``, the policy's own."""
    import importlib.util

    pythons = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    packages = {p for name in PACKAGES for p in importlib.util.find_spec(name).submodule_search_locations}
    paths = sorted(pythons | packages | set(SYSTEM_READ) | set(policy.read))
    for secret in map(_resolved, policy.hidden):
        exposed = [p for p in paths if secret.is_relative_to(_resolved(p))]
        if exposed:
            raise SandboxError(f"{secret} would be readable by model code (it is under {exposed[0]}): "
                               f"move it out of Python's and the project's folders")
    return paths


def _resolved(path: str) -> Path:
    return Path(path).resolve()


@dataclass
class Run:
    """One child's folder: inputs go in before :meth:`call`, the child writes only here."""

    policy: Policy
    workdir: Path = Path()
    isolation: str = ""

    def __enter__(self) -> Run:
        self.isolation = isolation(self.policy)  # refuses before anything is made
        read_paths(self.policy)
        self.workdir = Path(tempfile.mkdtemp(prefix="agentops-sandbox-"))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def download(self, model_uri: str) -> str:
        """The model's artifacts into this folder; runs none of its code."""
        import mlflow

        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(self.workdir / "model"))
        return os.path.relpath(local, self.workdir)

    def call(self, task: str, model_dir: str, **request: Any) -> Any:
        """Run ``task`` on the model in a confined child; its answer, parsed as JSON (not yet checked)."""
        request |= {"task": task, "model_dir": model_dir, "isolation": self.isolation,
                    "read": read_paths(self.policy), "connect_ports": list(self.policy.connect_ports)}
        (self.workdir / "request.json").write_text(json.dumps(request))
        with tempfile.TemporaryFile() as stderr:  # the parent's, outside the child's folder
            proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "agentops_pipelines.sandbox.child", str(self.workdir)],
                cwd=self.workdir, env=child_environment(os.environ, self.workdir, self.policy.pass_env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
            try:
                answer = _read_answer(proc, self.policy.timeout_s, self.policy.max_answer_bytes)
            except SandboxError as exc:
                raise SandboxError(f"{exc}{_tail(stderr)}") from None
            finally:
                _stop(proc)
            if proc.returncode != 0:
                raise SandboxError(f"the model's process exited with {proc.returncode}{_tail(stderr)}")
        try:
            return json.loads(answer, parse_constant=_no_constant)
        except ValueError as exc:
            raise SandboxError(f"the model's process answered something that is not JSON ({exc})") from None


def _read_answer(proc: subprocess.Popen, timeout_s: float, limit: int) -> bytes:
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError(f"the model's process did not finish within {timeout_s:g} s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise SandboxError(f"the model's process answered more than {limit} bytes")
            chunks.append(chunk)
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise SandboxError(f"the model's process did not exit within {timeout_s:g} s") from None
    return b"".join(chunks)


def _stop(proc: subprocess.Popen) -> None:
    """The child and anything it started (its own session) are gone."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    proc.stdout.close()


def _tail(stderr, n: int = 2000) -> str:
    stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, stderr.tell() - n))
    text = stderr.read().decode(errors="replace").strip()
    return f"; its last output:\n{text}" if text else ""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


# -- the tasks, and their answers checked ----------------------------------------------------------
@dataclass(frozen=True)
class Classified:
    """``outputs``: per input set, a frame of ``tool`` and ``confidence`` in input order."""

    outputs: dict[str, pd.DataFrame]
    latency_ms: list[float]
    isolation: str


def classify(model_uri: str, sets: Mapping[str, pd.DataFrame], latency_set: str, latency_samples: int,
             policy: Policy) -> Classified:
    """The model's ``predict`` on each frame of ``sets``, and its single-request latency over the
    first ``latency_samples`` rows of ``sets[latency_set]``, in one confined child."""
    import pandas as pd

    with Run(policy) as run:
        model_dir = run.download(model_uri)
        for name, frame in sets.items():
            frame.to_parquet(run.workdir / f"{name}.parquet", index=False)
        n = min(latency_samples, len(sets[latency_set]))
        answer = _fields(run.call("classify", model_dir, sets=list(sets), latency_set=latency_set,
                                  latency_samples=latency_samples), {"sets", "latency_ms"}, "the answer")
        got = _fields(answer["sets"], set(sets), "sets")
        outputs = {}
        for name, frame in sets.items():
            out = _fields(got[name], {"tool", "confidence"}, f"sets.{name}")
            tools = _list(out["tool"], len(frame), f"sets.{name}.tool", _tool)
            confidence = _list(out["confidence"], len(frame), f"sets.{name}.confidence", _number)
            outputs[name] = pd.DataFrame({"tool": tools, "confidence": confidence})
        latency = _list(answer["latency_ms"], n, "latency_ms", _number)
        return Classified(outputs, latency, run.isolation)


@dataclass(frozen=True)
class Decided:
    """A case's routing decision as the model made it: tool, confidence, milliseconds, the LLM's
    usage (tokens, latency) if any, or the error the router raised."""

    tool: str = ""
    confidence: float = 0.0
    ms: float = 0.0
    usage: dict | None = None
    error: str | None = None


@dataclass(frozen=True)
class Routed:
    """``router``: the model wraps one; ``labels``: its tools (None: it does not say);
    ``decisions``: one per input, None when the golden cases do not apply to it."""

    router: bool
    labels: list[str] | None
    decisions: list[Decided] | None
    isolation: str


def route(model_uri: str, inputs: Sequence[tuple[str, Mapping[str, Any]]], expected_tools: Sequence[str],
          policy: Policy) -> Routed:
    """The model's router on each (text, features) of ``inputs``, in one confined child, unless
    it knows none of ``expected_tools``' labels (then no decisions: nothing to run paths with)."""
    with Run(policy) as run:
        model_dir = run.download(model_uri)
        (run.workdir / "inputs.json").write_text(json.dumps([{"text": t, "features": dict(f)} for t, f in inputs],
                                                            default=_plain))
        answer = _fields(run.call("route", model_dir, expected_tools=sorted(expected_tools)),
                         {"router", "labels", "decisions"}, "the answer")
        if not isinstance(answer["router"], bool):
            raise SandboxError("router: not true or false")
        labels = None if answer["labels"] is None else _list(answer["labels"], None, "labels", _tool)
        decisions = None
        if answer["decisions"] is not None:
            decisions = _list(answer["decisions"], len(inputs), "decisions", _decided)
        return Routed(answer["router"], labels, decisions, run.isolation)


def _fields(value: Any, names: set[str], what: str) -> dict:
    if not isinstance(value, dict) or set(value) != names:
        keys = sorted(value)[:10] if isinstance(value, dict) else type(value).__name__
        raise SandboxError(f"{what}: expected exactly the fields {sorted(names)}, got {keys}")
    return value


def _list(value: Any, n: int | None, what: str, item) -> list:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        got = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise SandboxError(f"{what}: expected a list{f' of {n} items' if n is not None else ''}, got {got}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(item(v))
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"{what}[{i}]: {exc}") from None
    return out


def _tool(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOOL_CHARS:
        raise ValueError(f"not a tool name (a string of 1 to {MAX_TOOL_CHARS} characters): {str(value)[:50]!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {str(value)[:50]!r}")
    return float(value)


def _decided(value: Any) -> Decided:
    if isinstance(value, dict) and set(value) == {"error", "ms"}:
        if not isinstance(value["error"], str):
            raise ValueError("error: not a string")
        return Decided(ms=_number(value["ms"]), error=value["error"][:1000])
    if not isinstance(value, dict) or set(value) != {"tool", "confidence", "ms", "usage"}:
        raise ValueError("not a decision ({tool, confidence, ms, usage} or {error, ms})")
    return Decided(_tool(value["tool"]), _number(value["confidence"]), _number(value["ms"]), _usage(value["usage"]))


def _usage(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_USAGE_KEYS:
        raise ValueError(f"usage: not an object of at most {MAX_USAGE_KEYS} fields")
    for k, v in value.items():
        if not (v is None or isinstance(v, bool | int | float | str)) or (isinstance(v, str) and len(v) > 1000):
            raise ValueError(f"usage.{k[:50]}: not a number, a short string, true, false or null")
    return value


def _plain(value: Any) -> Any:
    """NumPy scalars (features from the online store) as JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
