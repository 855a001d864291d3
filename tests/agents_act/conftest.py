import shutil

import pytest

from agentops_pipelines.agent.system_of_record import SystemOfRecord


@pytest.fixture(scope="session")
def seeded_file(tmp_path_factory):
    """One seeded database per test session; each test gets its own copy (seeding takes ~1 s)."""
    path = tmp_path_factory.mktemp("sor-template") / "system_of_record.db"
    sor = SystemOfRecord(f"sqlite:///{path}").ensure()
    sor.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture
def sor(seeded_file, tmp_path):
    path = tmp_path / "system_of_record.db"
    shutil.copy(seeded_file, path)
    s = SystemOfRecord(f"sqlite:///{path}")
    yield s
    s.dispose()


@pytest.fixture
def actions(sor):
    from agentops_pipelines.agent.actions import Actions

    return Actions(sor)
