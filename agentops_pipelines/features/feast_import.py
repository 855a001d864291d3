"""Import Feast without typeguard's import-time instrumentation (2.7 s of CPU per process).

Feast 0.67 decorates its classes with ``typeguard.typechecked``. In typeguard 4 that decorator
rebuilds each decorated function at import time: it reads the module's source, parses it,
rewrites the AST with type checks and compiles it again. Importing Feast and building our feature
objects took 3.90 s of CPU here, and 1.19 s with the decorator left out (medians,
``bench/process_startup.py``). Every serving process, and every Dagster run that touches features,
paid the difference before doing any work.

typeguard documents the decorator as a development aid that ``python -O`` turns off ("type
checking ... not meant to be run in production"). :func:`load_feast` does only that, and only
while Feast's modules are first imported: it swaps ``typeguard.typechecked`` for the identity,
imports ``feast``, then puts the real decorator back for everyone else. What Feast loses is the
run-time check of the argument types of its own constructors; our calls pass the declared types
(``feature_repo/definitions.py``), and Feast's own validation (names, schemas, sources) still runs.

``AGENTOPS_FEAST_TYPECHECKS=1`` keeps typeguard on, to debug a Feast call.

Importing Feast also names a Prometheus multiprocess folder in ``os.environ``
(``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR``, for Feast's own feature server,
which we do not run). Left there, it tells prometheus_client, in this process and in every process
it starts, that metrics live in files: a serving process's ``/metrics`` warned "Clearing labels
has not been implemented in multi-process mode" at each model swap, and a process started after
the import would keep its counters in files that its ``/metrics`` never shows. :func:`load_feast`
lets prometheus_client choose before Feast is imported (it chooses once, at its first import),
then removes the variables that Feast set, and keeps any that were set before it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from agentops_pipelines.vocabulary import EnvVar

_LOCK = threading.Lock()
#: What Feast's import sets for its own feature server (feast/metrics.py).
PROMETHEUS_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def _identity(target=None, **_options):
    """``typechecked`` as ``python -O`` makes it: the target, undecorated (also as a factory)."""
    return target if target is not None else _identity


@contextlib.contextmanager
def _typeguard_off():
    """``typeguard.typechecked`` is the identity inside, the real decorator again after."""
    import typeguard

    real = typeguard.typechecked
    typeguard.typechecked = _identity
    try:
        yield
    finally:
        typeguard.typechecked = real


def load_feast():
    """The ``feast`` module, imported once per process without typeguard's instrumentation."""
    if "feast" in sys.modules:
        return sys.modules["feast"]
    with _LOCK:
        if "feast" in sys.modules:
            return sys.modules["feast"]
        os.environ.setdefault("FEAST_USAGE", "False")
        before = {name for name in PROMETHEUS_VARIABLES if name in os.environ}
        # prometheus_client picks in-memory or file-backed values once, at its first import: let
        # it pick from this process's environment, before Feast names its folder there
        import prometheus_client.values  # noqa: F401
        keep_checks = os.environ.get(EnvVar.FEAST_TYPECHECKS) == "1"
        try:
            with contextlib.nullcontext() if keep_checks else _typeguard_off():
                import feast
            return feast
        finally:
            for name in set(PROMETHEUS_VARIABLES) - before:
                os.environ.pop(name, None)
