"""Code versions follow the code an asset runs (agentops_pipelines/code_versions.py)."""

import importlib
import sys
import uuid

import pytest

from agentops_pipelines.code_versions import source_modules, source_version


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throwaway package on sys.path: ``asset`` imports ``library`` inside a function (as the
    assets import their heavy code), ``library`` imports ``helpers``; ``unrelated`` is imported by
    nobody. Returns (package name, its folder)."""
    name = f"pkg_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    (folder / "sub").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "sub" / "__init__.py").write_text("")
    (folder / "asset.py").write_text(
        f'"""An asset."""\n\n\ndef build():\n    from {name}.sub import library  # the work\n\n'
        '    return library.run()\n')
    (folder / "sub" / "library.py").write_text(f"from {name}.helpers import (\n    twice,  # a helper\n)\n\n\n"
                                               "def run():\n    return twice(21)\n")
    (folder / "helpers.py").write_text("def twice(x):\n    return 2 * x\n")
    (folder / "unrelated.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name, folder
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def edit(path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_the_version_changes_with_the_code_the_asset_runs_and_only_with_it(package):
    name, folder = package
    asset = f"{name}.asset"
    assert source_modules(asset) == {asset, f"{name}.sub", f"{name}.sub.library", f"{name}.helpers"}
    first = source_version(asset)
    assert len(first) == 12 and source_version(asset) == first

    edit(folder / "unrelated.py", "VALUE = 2\n")
    assert source_version(asset) == first
    edit(folder / "helpers.py", "\n\ndef thrice(x):\n    return 3 * x\n")  # two imports away
    second = source_version(asset)
    assert second != first
    edit(folder / "asset.py", "# a comment is a change too\n")
    assert source_version(asset) not in (first, second)
    assert f"{name}.asset" not in sys.modules, "the version is read from the files, nothing is imported"


def test_the_lifecycles_assets_follow_their_own_code():
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.lifecycle import build_lifecycle

    evaluation = source_modules("agentops_pipelines.assets.evaluation")
    assert {"agentops_pipelines.evaluation", "agentops_pipelines.plots", "agentops_pipelines.resources.lake"} <= evaluation
    assert not {m for m in evaluation if m.startswith(("agentops_pipelines.serving", "agentops_pipelines.k8s"))}
    assert "agentops_pipelines.agent.support_desk" not in evaluation
    training = source_modules("agentops_pipelines.assets.training", SupportDeskAgent.__module__)
    assert {"agentops_pipelines.agent.support_desk", "agentops_pipelines.agent.recipes"} <= training

    lifecycle = build_lifecycle(SupportDeskAgent(), inference_log_root="/nonexistent")
    versions = {a.key.path[-1]: a.code_versions_by_key[a.key] for a in lifecycle.assets}
    assert all(v and len(v) == 12 for v in versions.values()), versions
    # Assets built from one module share its version; the others differ.
    assert versions["customer_features"] == versions["training_set"]
    assert len(set(versions.values())) == len(versions) - 1
