"""The sandbox's layers on their own: Landlock and seccomp in a real child process, the child's
environment, and the parent's strict reading of what a child answers."""

import json
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from agentops_pipelines import sandbox
from agentops_pipelines.sandbox import landlock

needs_landlock = pytest.mark.skipif(landlock.abi_version() < 4, reason="needs Landlock ABI 4+ (files and TCP)")

PROBE = textwrap.dedent("""
    import json, os, socket, sys
    from pathlib import Path
    from agentops_pipelines.sandbox import landlock, seccomp

    args = json.loads(sys.argv[1])
    landlock.restrict(read=args["read"], write=[args["rw"]], connect_ports=[args["open_port"]])
    seccomp.install()

    def attempt(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return f"errno {exc.errno}"

    def connect(port):
        socket.create_connection(("127.0.0.1", port), timeout=3).close()

    print(json.dumps({
        "read_allowed": attempt(lambda: Path(args["readable"]).read_text()),
        "read_secret": attempt(lambda: Path(args["secret"]).read_text()),
        "write_secret": attempt(lambda: Path(args["secret"]).write_text("x")),
        "write_rw": attempt(lambda: (Path(args["rw"]) / "f").write_text("x")),
        "write_readable": attempt(lambda: Path(args["readable"]).write_text("x")),
        "tcp_allowed": attempt(lambda: connect(args["open_port"])),
        "tcp_other": attempt(lambda: connect(args["closed_port"])),
        "tcp_bind": attempt(lambda: socket.socket().bind(("127.0.0.1", 0))),
        "unix": attempt(lambda: socket.socket(socket.AF_UNIX)),
        "udp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "parent_environ": attempt(lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes()),
    }))
""")


@needs_landlock
def test_landlock_and_seccomp_leave_a_process_only_what_it_was_given(tmp_path):
    readable, secret, rw = tmp_path / "readable", tmp_path / "secret", tmp_path / "rw"
    readable.mkdir()
    rw.mkdir()
    (readable / "notes.txt").write_text("hello")
    secret.write_text("the audit key")
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        args = {"read": sandbox.read_paths(sandbox.Policy()) + [str(readable)], "rw": str(rw),
                "readable": str(readable / "notes.txt"), "secret": str(secret),
                "open_port": listeners[0].getsockname()[1], "closed_port": listeners[1].getsockname()[1]}
        out = subprocess.run([sys.executable, "-I", "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin"})
    finally:
        for listener in listeners:
            listener.close()
    assert out.returncode == 0, out.stderr
    denied = "errno 13"  # EACCES
    assert json.loads(out.stdout) == {
        "read_allowed": "ok", "read_secret": denied, "write_secret": denied, "write_rw": "ok",
        "write_readable": denied, "tcp_allowed": "ok", "tcp_other": denied, "tcp_bind": denied,
        "unix": denied, "udp": denied, "parent_environ": denied}
    assert secret.read_text() == "the audit key"


def test_a_required_landlock_that_is_missing_refuses_to_run(monkeypatch):
    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    with pytest.raises(sandbox.SandboxError, match="no Landlock"):
        sandbox.isolation(sandbox.Policy(require_landlock=True))
    assert sandbox.isolation(sandbox.Policy()) == sandbox.ENV_ONLY


def test_the_childs_environment_holds_no_secret(tmp_path):
    parent = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "DAGSTER_PG_PASSWORD": "pw",
              "AGENTOPS_AUDIT_KEY_FILE": "/k", "AGENTOPS_SOR_URL": "postgresql://u:p@h/db",
              "MLFLOW_TRACKING_URI": "postgresql://u:p@h/mlflow", "AWS_SECRET_ACCESS_KEY": "s",
              "AGENTOPS_LLM_API_KEY": "llm", "PYTHONPATH": "/evil", "HOME": "/root"}
    env = sandbox.child_environment(parent, tmp_path, pass_env=["AGENTOPS_LLM_API_KEY"])
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "AGENTOPS_LLM_API_KEY": "llm",
                   "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}


def test_the_project_root_is_not_readable_only_its_packages():
    from agentops_pipelines.resources.settings import PROJECT_ROOT

    paths = sandbox.read_paths(sandbox.Policy(hidden=(str(PROJECT_ROOT / ".agentops"),)))
    assert str(PROJECT_ROOT) not in paths
    assert str(PROJECT_ROOT / "agentops_pipelines") in paths and str(PROJECT_ROOT / "assets") in paths


def test_a_secret_under_a_readable_folder_is_refused_by_name():
    with pytest.raises(sandbox.SandboxError, match="/usr/local/agentops/audit.key would be readable by model code"):
        sandbox.read_paths(sandbox.Policy(hidden=("/usr/local/agentops/audit.key",)))


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)


def test_a_child_that_answers_too_much_or_too_late_is_stopped():
    def answer(proc, timeout_s):
        try:
            return sandbox._read_answer(proc, timeout_s, 1000)
        finally:
            sandbox._stop(proc)

    with pytest.raises(sandbox.SandboxError, match="more than 1000 bytes"):
        answer(child("import sys; sys.stdout.write('x' * 100000)"), 30)
    proc = child("import time; time.sleep(60)")
    with pytest.raises(sandbox.SandboxError, match="did not finish within 0.5 s"):
        answer(proc, 0.5)
    assert proc.returncode is not None


@pytest.mark.parametrize("answer, error", [
    ({"sets": {"holdout": {"tool": ["a"], "confidence": [0.5]}}, "latency_ms": []},
     "sets.holdout.tool: expected a list of 2 items, got 1 items"),
    ({"sets": {"holdout": {"tool": ["a", 7], "confidence": [0.5, 0.5]}}, "latency_ms": []},
     r"sets.holdout.tool\[1\]: not a tool name"),
    ({"sets": {"holdout": {"tool": ["a", "b"], "confidence": [0.5, True]}}, "latency_ms": []},
     r"sets.holdout.confidence\[1\]: not a finite number"),
    ({"sets": {"holdout": {"tool": ["a", "b"], "confidence": [0.5, 0.5]}}, "latency_ms": [], "extra": 1},
     "the answer: expected exactly the fields"),
    ([1, 2], "the answer: expected exactly the fields"),
])
def test_an_answer_that_is_not_the_schema_is_refused_with_what_is_wrong(monkeypatch, answer, error):
    monkeypatch.setattr(sandbox.Run, "download", lambda self, uri: "model")
    monkeypatch.setattr(sandbox.Run, "call", lambda self, task, model_dir, **request: answer)
    frame = pd.DataFrame({"text": ["x", "y"], "tool": ["a", "b"]})
    with pytest.raises(sandbox.SandboxError, match=error):
        sandbox.classify("runs:/r/agent", {"holdout": frame}, "holdout", 0, sandbox.Policy())


def test_a_decision_is_a_tool_or_an_error():
    assert sandbox._decided({"error": "ValueError: x", "ms": 1}).error == "ValueError: x"
    assert sandbox._decided({"tool": "t", "confidence": 1, "ms": 2.0, "usage": {"tokens": 3}}).usage == {"tokens": 3}
    for bad in ({"tool": "t"}, {"tool": "t", "confidence": 1, "ms": 1, "usage": {"k": [1]}}, "t"):
        with pytest.raises(ValueError):
            sandbox._decided(bad)
