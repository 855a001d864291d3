"""Loading a registered model: MLflow's environment check without its scan of every installed file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agentops_pipelines.model_loading import python_mismatch, requirement_mismatches

MODEL_CODE = """
import mlflow
import pandas as pd


class Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"tool": ["track_order"] * len(model_input)})


mlflow.models.set_model(Model())
"""

LOAD = """
import importlib, importlib.metadata, json, logging, sys
calls = []
def counting(module):
    real = module.packages_distributions
    def counted():
        calls.append(module.__name__)
        return real()
    module.packages_distributions = counted
counting(importlib.metadata)
try:  # MLflow uses the backport when it is installed
    counting(importlib.import_module("importlib_metadata"))
except ImportError:
    pass
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
from agentops_pipelines.serving.models import load_pyfunc
model = load_pyfunc(sys.argv[1], "1")
print(json.dumps({"scans": len(calls), "warnings": records,
                  "tool": model.predict(__import__("pandas").DataFrame({"text": ["hi"]}))["tool"].tolist()}))
"""


def test_requirement_mismatches_agree_with_mlflows_check():
    from mlflow.utils.requirements_utils import _check_requirement_satisfied

    lines = ["pandas", "scikit-learn==0.0.1", "no-such-package-agentops==1.0", "numpy>=1",
             "mlflow<1 ; python_version < '3'", "-r other.txt", "./a/local/path", "# a comment", ""]
    ours = requirement_mismatches(lines)
    assert [m.split("=")[0].split(" ")[0] for m in ours] == ["scikit-learn", "no-such-package-agentops"]
    assert "the model wants scikit-learn==0.0.1" in ours[0] and "not installed" in ours[1]
    theirs = [_check_requirement_satisfied(line) for line in lines if line and not line.startswith(("-", "#", "."))]
    assert [m.package_name for m in theirs if m is not None] == ["scikit-learn", "no-such-package-agentops"]


def test_a_model_from_another_python_is_named():
    assert python_mismatch(None).startswith("the model does not say")
    assert python_mismatch("2.7.18") == f"the model was saved by Python 2.7.18; this is Python {sys.version.split()[0]}"
    assert python_mismatch(".".join(sys.version.split()[0].split(".")[:2]) + ".0") is None


@pytest.mark.slow
def test_a_served_model_is_loaded_without_scanning_every_installed_file_and_still_warns(tmp_path):
    """MLflow's own check mapped every installed module to its package (a stat of each installed
    file, ~0.5 s of CPU per serving process). The serving load makes no such scan and still warns
    about the model's unmet requirement."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = tmp_path / "model.py"
    code.write_text(MODEL_CODE)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.create_experiment("load", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name="pinned",
                                    pip_requirements=["pandas", "scikit-learn==0.0.1"])
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    out = subprocess.run([sys.executable, "-c", LOAD, "models:/pinned/1"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["tool"] == ["track_order"]
    assert seen["scans"] == 0
    warned = [w for w in seen["warnings"] if "this environment differ" in w]
    assert len(warned) == 1 and "scikit-learn==" in warned[0] and "the model wants scikit-learn==0.0.1" in warned[0]


def test_a_package_whose_metadata_cannot_be_read_is_skipped_not_fatal(tmp_path, monkeypatch):
    """In a confined serving process our own package's metadata (an ``.egg-info`` beside the
    source) was found but unreadable, and the check raised: the model never loaded. A check that
    cannot run is not a mismatch and never stops a load."""
    (tmp_path / "unreadable_pkg-1.0.dist-info").mkdir()  # found, with no METADATA to read
    monkeypatch.syspath_prepend(str(tmp_path))
    wanted = requirement_mismatches(["scikit-learn==0.0.1"])
    # here importlib_metadata (MLflow's) finds it and raises; a plain interpreter's importlib says None
    assert requirement_mismatches(["unreadable-pkg==1.0", "scikit-learn==0.0.1"]) == wanted
    plain = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
                            "from agentops_pipelines.model_loading import requirement_mismatches as m; "
                            "print(json.dumps(m(['unreadable-pkg==1.0', 'scikit-learn==0.0.1'])))", str(tmp_path)],
                           capture_output=True, text=True, check=True)
    assert json.loads(plain.stdout) == wanted


def test_a_hostile_requirements_line_stays_short_in_the_log():
    """The requirements file is the model's: what we quote from it is bounded."""
    found = requirement_mismatches(["no-such-package-agentops==1.0" + "0" * 100_000, "x" * 1_000_000])
    assert len(found) == 2 and all(len(m) < 500 for m in found)


def test_the_models_files_are_found_where_mlflow_copies_them(tmp_path):
    """A ``models:/`` URI's files land in ``dst_path``; a ``runs:/`` URI's in its artifact folder
    there. A folder URI is its own copy; a remote URI without a copy is not checked."""
    from agentops_pipelines.model_loading import _model_dir

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "MLmodel").write_text("")
    (tmp_path / "nested" / "agent").mkdir(parents=True)
    (tmp_path / "nested" / "agent" / "MLmodel").write_text("")
    assert _model_dir("models:/m/1", str(tmp_path / "flat")) == tmp_path / "flat"
    assert _model_dir("runs:/r/agent", str(tmp_path / "nested")) == tmp_path / "nested" / "agent"
    assert _model_dir(str(tmp_path / "flat"), None) == tmp_path / "flat"
    assert _model_dir("models:/m/1", None) is None
    assert _model_dir("models:/m/1", str(tmp_path / "missing")) is None
