"""What an approval binds to: the SHA-256 of a version's model artifacts and of its evaluation report.

A digest covers a folder: every file's path relative to the folder and its bytes, in sorted order,
so a changed, added or removed file changes it. The registry asset records both digests in the
audit log when it registers a version; a reviewer's CLI computes them again from MLflow and signs
them; the promotion job and the deployment asset compute the artifacts digest once more right
before deploying. Any difference voids the approval.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

# Written by MLflow into a ``models:/`` download (the registry's name and version), not part of
# the logged model's artifacts.
_NOT_ARTIFACTS = {"registered_model_meta"}


def tree_sha256(root: Path) -> str:
    outer = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _NOT_ARTIFACTS)
    if not files:
        raise ValueError(f"nothing to digest under {root}")
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def model_artifacts_sha256(client, agent: str, version: str) -> str:
    """The digest of ``models:/<agent>/<version>``'s artifacts as MLflow serves them now."""
    import mlflow

    source = client.get_model_version_download_uri(agent, str(version))
    with tempfile.TemporaryDirectory(prefix="agentops-digest-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        return tree_sha256(Path(local))


def evaluation_report_sha256(client, run_id: str) -> str:
    """The digest of the ``evaluation/`` folder (summary, HTML reports) of the candidate's run."""
    with tempfile.TemporaryDirectory(prefix="agentops-digest-") as tmp:
        local = client.download_artifacts(run_id, "evaluation", tmp)
        return tree_sha256(Path(local))
