"""Does the support desk gain from the default recipe's MiniLM embeddings?

Usage (from the project root)::

    .venv/bin/python bench/support_desk_embeddings.py

The simulated shop (``data/generator.py``): three days of requests (2026-11-01..03, 800 each)
with the customer features the support desk declares, trained with the support desk's own
recipe with the embeddings off (its default) and on; tested on a later day (2026-11-10). Prints
accuracy and fit CPU seconds for each. The answer decides the support desk's default (README,
"Agents declared by configuration"; BENCHMARKS.md, "Tool routing on BANKING77").
"""

from __future__ import annotations

import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def day(d: date):
    from agentops_pipelines.data.generator import customer_snapshot, generate_requests

    return generate_requests(d).merge(customer_snapshot(d), on="customer_id", how="left")


def main() -> int:
    import pandas as pd

    from agentops_pipelines.agent.support_desk import SupportDeskAgent

    train = pd.concat([day(date(2026, 11, 1) + timedelta(i)) for i in range(3)], ignore_index=True)
    test = day(date(2026, 11, 10))
    agent = SupportDeskAgent()
    print("| embeddings | accuracy (day 2026-11-10) | fit CPU (s) |\n|---|---:|---:|")
    for embeddings in (0, 1):
        started = time.process_time()
        router = agent.train(train, {"embeddings": embeddings})
        fit = time.process_time() - started
        accuracy = (router.predict(test)["tool"].to_numpy() == test["tool"].to_numpy()).mean()
        print(f"| {embeddings} | {accuracy:.4f} | {fit:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
