"""How long a serving process takes to start serving: a deploy, and every restart after a crash.

Usage (from the project root)::

    .venv/bin/python bench/serving_start.py --rounds 5
    rm -rf /tmp/before && mkdir -p /tmp/before && git archive <commit> agentops_pipelines | tar -x -C /tmp/before
    .venv/bin/python bench/serving_start.py --rounds 5 --baseline before=/tmp/before

Set-up (a temporary folder): the support-desk lifecycle run on embedded defaults
(``serving_latency.train_model``: three days ingested, trained, registered), so the served model's
feature lookup opens the materialized Feast online store at its warm-up, as a deployed one does. Each round starts one
serving process per code copy (this checkout, then each ``--baseline NAME=FOLDER``, the order
alternating from round to round), as ``LocalProcessDeployer`` runs it (``serving_latency.ours``:
inference log on, 1% traced). Measured from the ``Popen`` to the state file's ``"serving"`` (the
model loaded, its first prediction made, the port answering): the wall time, and the CPU time of
the server process by then (``/proc/<pid>/stat``, user + system, the process itself). Reported:
medians and ranges per copy, and the ratio against the first baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from serving_latency import ours  # noqa: E402 - the bench folder is on the path from here

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def start_once(model_uri: str, code: str | None, workdir: Path, name: str) -> tuple[float, float]:
    started = time.perf_counter()
    with ours(model_uri, model_uri.rsplit("/", 1)[1], workdir, name=name, code=code) as (_url, pid):
        wall = time.perf_counter() - started
        return wall, cpu_seconds(pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=FOLDER")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from serving_latency import train_model

    work = Path(tempfile.mkdtemp(prefix="serving-start-"))
    # the lifecycle as `make demo` runs it: the model, and the online store its feature lookup reads
    model_uri, _version, uri = train_model(work / "agentops")
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
                       # a folder of its own: a confined server may write beside its database (the
                       # journal), never in the state folder (serving/confine.py)
                       "AGENTOPS_SOR_URL": f"sqlite:///{work}/sor/system_of_record.db", "FEAST_USAGE": "False"})
    (work / "sor").mkdir()
    copies = [("this checkout", None)] + [(n, str(Path(f).resolve())) for n, _, f in
                                          (b.partition("=") for b in args.baseline)]
    start_once(model_uri, None, work, "warm-up")  # the page cache and the bytecode, for everyone
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in copies}
    loads = []
    for r in range(args.rounds):
        for name, code in copies if r % 2 == 0 else copies[::-1]:
            loads.append(os.getloadavg()[0])
            results[name].append(start_once(model_uri, code, work, f"{name.replace(' ', '-')}-{r}"))
            wall, cpu = results[name][-1]
            print(f"round {r}: {name}: serving after {wall:.2f} s, {cpu:.2f} s of CPU", flush=True)
    baseline_flags = "".join(f" --baseline {b}" for b in args.baseline)
    print(f"\n`.venv/bin/python bench/serving_start.py --rounds {args.rounds}{baseline_flags}` "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-minute load average "
          f"{min(loads):.1f}–{max(loads):.1f})\n")
    print("| code | wall to serving, median (s) | range | server CPU by then, median (s) | range |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        medians[name] = (statistics.median(walls), statistics.median(cpus))
        print(f"| {name} | {medians[name][0]:.2f} | {min(walls):.2f}–{max(walls):.2f} | {medians[name][1]:.2f} | "
              f"{min(cpus):.2f}–{max(cpus):.2f} |")
    if len(copies) > 1:
        base = copies[1][0]
        print(f"\nthis checkout / {base}: wall {medians['this checkout'][0] / medians[base][0]:.2f}, "
              f"CPU {medians['this checkout'][1] / medians[base][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
