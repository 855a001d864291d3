"""When a serving process cannot be confined as asked it must not load a model: Landlock required
but missing is a refusal (exit code 3, a message that says why), and so is a thread that started
before confinement (it would stay unconfined). The test seam that reports Landlock missing can
only cause a refusal: where Landlock is not required it is ignored and the process is confined."""

import os
import subprocess
import sys
import textwrap

import pytest

from agentops_pipelines.sandbox import landlock
from agentops_pipelines.serving.confine import ASSUME_NO_LANDLOCK


def _environ(tmp_path, **extra) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "AGENTOPS_HOME": str(home), "AGENTOPS_SERVING_ADMIN_TOKEN": "t" * 32,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", **extra}


def _serve(tmp_path, *flags: str, **env) -> subprocess.CompletedProcess:
    """A serving process of a model folder that does not exist: it must stop before loading it."""
    command = [sys.executable, "-m", "agentops_pipelines.serving", "--model-uri", str(tmp_path / "no-model"),
               "--version", "1", "--environment", "dev", "--no-tracing", "--sor-fallback", "off", *flags]
    return subprocess.run(command, env=_environ(tmp_path, **env), capture_output=True, text=True, timeout=120)


def test_a_server_that_requires_landlock_refuses_to_serve_without_it(tmp_path):
    done = _serve(tmp_path, "--require-landlock", **{ASSUME_NO_LANDLOCK: "true"})
    assert done.returncode == 3, done.stderr[-2000:]
    assert "refusing to serve" in done.stderr and "no Landlock" in done.stderr
    assert "AGENTOPS_SANDBOX_REQUIRE_LANDLOCK" in done.stderr  # says which setting made it refuse


def test_the_requirement_also_comes_from_the_environment(tmp_path):
    done = _serve(tmp_path, **{ASSUME_NO_LANDLOCK: "1", "AGENTOPS_SANDBOX_REQUIRE_LANDLOCK": "true"})
    assert done.returncode == 3, done.stderr[-2000:]


CONFINE = textwrap.dedent("""
    import json, os, sys, threading
    from pathlib import Path
    from agentops_pipelines.serving.confine import ConfinementError, ServingPolicy, apply

    secret = Path(sys.argv[1])
    if sys.argv[2] == "thread":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    try:
        isolation = apply(ServingPolicy(read=(), write=(os.environ["TMPDIR"],), connect_ports=(), require_landlock=False,
                                        assume_no_landlock=True))
    except ConfinementError as e:
        print(json.dumps({"refused": str(e)}))
        sys.exit(0)
    try:
        secret.read_text()
        read = "read"
    except PermissionError:
        read = "denied"
    result = {"isolation": isolation, "secret": read}
    if sys.argv[2] == "libraries":
        # What a served model's first feature lookup imports: Feast, whose dill opens /dev/null
        # read-write and whose Dask offline store reads /proc/meminfo (psutil); the secret beside
        # them stays out of reach.
        import feast.infra.offline_stores.dask  # noqa: F401
        with open(os.devnull, "r+b") as f:
            f.write(b"x")
        result["devnull"] = "written"
    print(json.dumps(result))
""")


def _child_environ(tmp_path) -> dict:
    # Not the multiprocess metrics folder Feast names in this worker's environment when it is
    # imported (a serving process drops it: serving/__main__.py; this script is not one).
    inherited = {k: v for k, v in os.environ.items() if not k.lower().startswith("prometheus_multiproc")}
    return {**inherited, ASSUME_NO_LANDLOCK: "true", "TMPDIR": str(tmp_path / "tmp")}


def _confine(tmp_path, mode: str) -> dict:
    import json

    secret = tmp_path / "secret"
    secret.write_text("key")
    done = subprocess.run([sys.executable, "-c", CONFINE, str(secret), mode], capture_output=True, text=True,
                          timeout=120, env=_child_environ(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(landlock.abi_version() < 1, reason="needs Landlock")
def test_the_seam_never_leaves_a_process_unconfined_where_landlock_is_not_required(tmp_path):
    assert _confine(tmp_path, "alone") == {"isolation": "landlock+seccomp", "secret": "denied"}


@pytest.mark.skipif(landlock.abi_version() < 1, reason="needs Landlock")
def test_a_confined_process_can_import_what_opens_dev_null_for_writing(tmp_path):
    assert _confine(tmp_path, "libraries") == {"isolation": "landlock+seccomp", "secret": "denied",
                                               "devnull": "written"}


def test_a_thread_started_before_confinement_is_a_refusal(tmp_path):
    refused = _confine(tmp_path, "thread")["refused"]
    assert "stay unconfined" in refused and "Thread-1" in refused
