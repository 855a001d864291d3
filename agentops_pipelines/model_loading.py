"""Load an MLflow pyfunc model, and warn when its requirements differ from this environment.

``mlflow.pyfunc.load_model`` checks the model's ``requirements.txt`` against the environment. To
do that, MLflow first maps every installed module to its package
(``importlib.metadata.packages_distributions``), which stats every file of every installed
distribution: about 0.5 s of CPU in each process that loads a model (a serving process at every
start and restart, each sandbox child of an evaluation, the shadow worker). :func:`load_model`
skips MLflow's check (``suppress_warnings=True``) and makes the same two checks itself, more
cheaply. It asks ``importlib.metadata`` for the version of each package the model requires, and
compares the model's Python with this one (major.minor). Mismatches are logged as warnings, as
MLflow logs them. They do not stop the load, which MLflow would not do either.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger("agentops_pipelines.model_loading")
MAX_LINE = 200  # characters of a requirement line kept (a longer one is no package requirement)


def requirement_mismatches(requirements: Iterable[str]) -> list[str]:
    """The requirements this environment does not satisfy, each as ``name==installed (wants spec)``
    or ``name (not installed)``. Lines that are not a package requirement (a path, a URL, an
    option such as ``-r``) and requirements whose marker excludes this environment are skipped."""
    from importlib.metadata import PackageNotFoundError

    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    for line in requirements:
        line = line.split("#", 1)[0].strip()[:MAX_LINE]  # the model's file: quoted in our log, bounded
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = _installed_version(req.name)
        except PackageNotFoundError:
            found.append(f"{req.name} (not installed; the model wants {line})")
            continue
        except Exception as e:  # noqa: BLE001 - unreadable metadata (e.g. confined): not a mismatch
            logger.debug("could not read the installed version of %s: %s: %s", req.name, type(e).__name__, e)
            continue
        if not installed:  # metadata found without a version (the stdlib's answer to the case above)
            logger.debug("could not read the installed version of %s", req.name)
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            found.append(f"{req.name}=={installed} (the model wants {line})")
    return found


def _installed_version(name: str) -> str:
    """The installed version of package ``name``; MLflow's own from ``mlflow.__version__``, as
    MLflow's check does (an editable install's metadata can say otherwise)."""
    from importlib.metadata import version

    if name.lower() == "mlflow":
        import mlflow

        return mlflow.__version__
    return version(name)


def python_mismatch(model_python: str | None) -> str | None:
    """A message when the model was saved by another Python (major.minor), else None."""
    here = platform.python_version()
    if not model_python:
        return f"the model does not say which Python saved it; this is Python {here}"
    if model_python.split(".")[:2] != here.split(".")[:2]:
        return f"the model was saved by Python {model_python}; this is Python {here}"
    return None


def check_environment(local_path: str | Path, model_python: str | None) -> list[str]:
    """Warn (and return the messages) where the model in ``local_path`` needs another environment.
    The check never stops a load: when it cannot run, it says so and the load goes on."""
    problems = []
    requirements = Path(local_path) / "requirements.txt"
    try:
        if requirements.is_file():
            problems += requirement_mismatches(requirements.read_text().splitlines())
    except Exception as e:  # noqa: BLE001 - as MLflow's own check: a warning, never a failed load
        logger.warning("could not check the requirements of the model at %s: %s: %s", local_path,
                       type(e).__name__, e)
    py = python_mismatch(model_python)
    if py:
        problems.append(py)
    if problems:
        logger.warning("the model at %s and this environment differ: %s", local_path, "; ".join(problems))
    return problems


def _model_dir(model_uri: str, dst_path: str | None) -> Path | None:
    """Where the loaded model's files are: ``model_uri`` itself when it is a folder, else
    ``dst_path`` (where MLflow copies a ``models:/`` URI's files) or the folder in it that holds
    the ``MLmodel`` file (a ``runs:/`` URI's artifact path). Nothing deeper is walked."""
    if Path(model_uri).is_dir():
        return Path(model_uri)
    if dst_path is None:
        return None
    top = Path(dst_path)
    candidates = [top, *sorted(p for p in top.iterdir() if p.is_dir())] if top.is_dir() else []
    return next((c for c in candidates if (c / "MLmodel").is_file()), None)


def load_model(model_uri: str, dst_path: str | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` without MLflow's costly requirements check, and with ours.

    A model that is not a local folder needs ``dst_path`` (a folder of its own) for the check to
    find its files; without one, the check is skipped and the debug log says so."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri, dst_path=dst_path, suppress_warnings=True)
    folder = _model_dir(model_uri, dst_path)
    if folder is None:
        logger.debug("the environment of %s was not checked: no local copy to read", model_uri)
        return model
    flavor = (model.metadata.flavors or {}).get(mlflow.pyfunc.FLAVOR_NAME, {})
    check_environment(folder, flavor.get(mlflow.pyfunc.PY_VERSION))
    return model
