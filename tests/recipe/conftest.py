import pandas as pd
import pytest

from tests.conftest import BANKING77

TRAIN_CSV = BANKING77 / "train.csv"


@pytest.fixture(scope="session")
def banking77() -> pd.DataFrame:
    """BANKING77's training file as ``text``, ``tool`` (read where it lives; never copied)."""
    if not TRAIN_CSV.exists():
        pytest.skip(f"BANKING77 is not at {TRAIN_CSV} (it lives in ../shared, beside the project)")
    return pd.read_csv(TRAIN_CSV).rename(columns={"category": "tool"})
