"""How long a request thread waits for its CPU beside busy background work: SCHED_IDLE vs nice.

Usage (from the project root; Linux)::

    .venv/bin/python bench/background_wakeup.py --seconds 10 --rounds 3

Why: the evaluation worker (``serving/online_eval.py``) is CPU-bound background work beside the
serving process. A probe thread stands in for a request: it sleeps 2 ms, wakes, and records how
late it runs (wake-up latency), pinned to CPU 0 beside a busy loop pinned there too, the loop run
as the worker would run: ``nice`` 10 (the worker before), ``SCHED_IDLE``
(``online_eval.background_priority``), and no loop at all; the three alternate round by round so
other load hits all alike. Reported: p50/p99/max of the probe's lateness per configuration.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time


def busy(policy: str, stop) -> None:
    os.sched_setaffinity(0, {0})
    if policy.startswith("session"):  # "session <autogroup nice>"
        os.setsid()
        with open("/proc/self/autogroup", "w") as f:
            f.write(policy.split()[1])
    if policy == "idle" or policy.startswith("session"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(10)
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


def probe(seconds: float, period_s: float = 0.002) -> list[float]:
    """Lateness (ms) of each wake-up of a thread pinned to CPU 0 that sleeps ``period_s``."""
    os.sched_setaffinity(0, {0})
    late = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter() + period_s
        time.sleep(period_s)
        late.append((time.perf_counter() - due) * 1000)
    return late


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per configuration and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--autogroup-nice", type=int, nargs="*", default=[0, 10, 19],
                   help="the own-session variants' autogroup nice values")
    args = p.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    policies = {"nice 10": "nice", "SCHED_IDLE": "idle",
                **{f"SCHED_IDLE, own session at autogroup nice {n}": f"session {n}" for n in args.autogroup_nice}}
    results: dict[str, list[tuple[float, float, float]]] = {"none": [], **{name: [] for name in policies}}
    loads = []
    for _ in range(args.rounds):
        for name in results:
            stop = ctx.Event()
            worker = None
            if name != "none":
                worker = ctx.Process(target=busy, args=(policies[name], stop))
                worker.start()
                time.sleep(0.5)
            loads.append(os.getloadavg()[0])
            late = probe(args.seconds)
            if worker is not None:
                stop.set()
                worker.join(5)
            results[name].append((quantile(late, 0.5), quantile(late, 0.99), max(late)))
            print(name, [round(v, 3) for v in results[name][-1]], flush=True)
    print(f"\n`.venv/bin/python bench/background_wakeup.py --seconds {args.seconds:g} --rounds {args.rounds}` "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-minute load average "
          f"{min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores)\n")
    print("| busy loop beside the probe (CPU 0) | lateness p50 ms | p99 ms (median of rounds, range) | max ms |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        p99 = [r[1] for r in rows]
        print(f"| {name} | {statistics.median(r[0] for r in rows):.3f} | {statistics.median(p99):.3f} "
              f"({min(p99):.3f}–{max(p99):.3f}) | {max(r[2] for r in rows):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
