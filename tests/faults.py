"""A router that fails on demand, for tests that need a bad version in production.

Pickled by value (``cloudpickle.register_pickle_by_value``) so the serving process can load it
without the tests folder on its path.
"""

import pandas as pd


class FaultyRouter:
    """Routes like ``inner`` but raises on any request whose text contains ``trigger``."""

    def __init__(self, inner, trigger: str = "boom"):
        self.inner = inner
        self.trigger = trigger

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        if requests["text"].astype(str).str.contains(self.trigger).any():
            raise RuntimeError(f"injected fault: request text contains {self.trigger!r}")
        return self.inner.predict(requests)
