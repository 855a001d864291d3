"""Two agents served side by side on one machine: does each keep its serving p99?

Usage (from the project root)::

    .venv/bin/python bench/two_agents_serving.py                  # trains the model first (~1 min)
    .venv/bin/python bench/two_agents_serving.py --home /tmp/sbench/home --write   # reuse, record

The real support-desk model (the lifecycle run by ``bench/serving_latency.py``'s ``train_model``)
is registered under two agent names, ``support_agent`` and ``billing_agent``, and one
``LocalProcessDeployer`` (the code location's one resource) deploys both to prod: two supervised
serving processes, each on its own port with its own admin token and inference log, as deployed
(inference log on, 1% of requests traced). Each round measures, in rotating order, each agent
alone at ``--rate`` and then both at once at ``--rate`` each (open loop, latency from the
scheduled send time: ``serving_latency.open_loop``). Each agent's load comes from its own client
process, alone or side by side, so the client side is the same in both cases. Reported: per agent
and case, the medians over rounds of p50 and p99, the p99 range, errors, and the ratio of the
side-by-side p99 to the alone p99 (taken in the same run, so machine noise hits both alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Two agents side by side"
AGENTS = ("support_agent", "billing_agent")


def drive(url: str, rate: float, duration: float, connections: int) -> dict:
    """One client process's open-loop load on ``url`` (run as ``--drive``)."""
    from serving_latency import open_loop, quantile

    latency, status, wall = open_loop(url, rate, duration, connections)
    ok = [ms for ms, st in zip(latency, status, strict=True) if st == 200 and ms is not None]
    return {"sent": len(latency), "errors": len(latency) - len(ok), "p50_ms": quantile(ok, 0.5),
            "p99_ms": quantile(ok, 0.99), "max_ms": max(ok, default=float("nan")),
            "achieved_rps": len(latency) / wall if wall else 0.0}


def load(urls: list[str], rate: float, duration: float, connections: int,
         pgids: list[int] | None = None) -> list[dict]:
    """Drive every URL at once, each from its own process; their results, in order, with the
    CPU time its server (process group ``pgids[i]``) spent per request."""
    from serving_latency import process_cpu_seconds

    cpu0 = [process_cpu_seconds(g) for g in pgids or []]
    procs = [subprocess.Popen([sys.executable, __file__, "--drive", url, "--rate", str(rate),
                               "--duration", str(duration), "--connections", str(connections)],
                              stdout=subprocess.PIPE, text=True) for url in urls]
    results = [json.loads(p.communicate(timeout=duration + 120)[0]) for p in procs]
    for i, g in enumerate(pgids or []):
        used = (process_cpu_seconds(g) or 0.0) - (cpu0[i] or 0.0)
        results[i]["cpu_ms_per_request"] = 1000.0 * used / max(1, results[i]["sent"])
    return results


def prepare(home: Path) -> tuple[str, str]:
    """(tracking URI, version): the support desk trained in ``home`` (once) and the same model
    registered as the second agent."""
    os.environ["AGENTOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow

    from agentops_pipelines.resources.settings import load_settings

    uri = load_settings().mlflow_tracking_uri
    client = mlflow.MlflowClient(uri, uri)
    try:
        version = str(max(int(v.version) for v in client.search_model_versions("name='support_agent'")))
    except ValueError:
        from serving_latency import train_model

        _, version, uri = train_model(home)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    source = client.get_model_version("support_agent", version)
    if not client.search_model_versions("name='billing_agent'"):
        mlflow.register_model(f"runs:/{source.run_id}/agent", "billing_agent")
    return uri, version


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["agent"], r["case"]), []).append(r)
    out = []
    for (agent, case), rs in groups.items():
        out.append({"agent": agent, "case": case, "rounds": len(rs), "sent": sum(r["sent"] for r in rs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "p99_low": min(r["p99_ms"] for r in rs), "p99_high": max(r["p99_ms"] for r in rs),
                    "errors": sum(r["errors"] for r in rs),
                    "cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in rs),
                    "achieved_rps": statistics.median(r["achieved_rps"] for r in rs)})
    return out


def report(summary: list[dict], args, load_before: float, load_after: float, command: str) -> str:
    mode = ("one-step model (no tools: `AGENTOPS_SOR_URL=off`), p99 goal 10 ms" if args.one_step
            else "acting model (tools on SQLite), p99 goal 20 ms")
    lines = [SECTION, "",
             f"Both agents in prod, {mode}, through one `LocalProcessDeployer`: two supervised serving processes "
             f"(own ports, admin tokens, inference logs; 1% traced), the real support-desk model under "
             f"each name. Open loop at {args.rate:g} req/s per agent, {args.duration:g} s per case, "
             f"{args.rounds} rounds (order rotated), {args.connections} keep-alive connections per "
             f"client process, one client process per agent. Measured on {os.cpu_count()} cores "
             f"({platform.machine()}, Python {platform.python_version()}); load average "
             f"{load_before:.1f} before, {load_after:.1f} after.", "",
             "| agent | case | rounds × requests | p50 (ms) | p99 (ms, median) | p99 range (ms) | errors | achieved (req/s) | server CPU per request (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['agent']} | {s['case']} | {s['rounds']} × {s['sent'] // s['rounds']} | "
                     f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['p99_low']:.1f}–{s['p99_high']:.1f} | "
                     f"{s['errors']} | {s['achieved_rps']:.1f} | {s['cpu_ms']:.2f} |")
    lines.append("")
    for agent in AGENTS:
        alone = next(s for s in summary if s["agent"] == agent and s["case"] == "alone")
        both = next(s for s in summary if s["agent"] == agent and s["case"] == "side by side")
        lines.append(f"- {agent}: p99 side by side / alone = {both['p99_ms'] / alone['p99_ms']:.2f}×; "
                     f"server CPU per request side by side / alone = {both['cpu_ms'] / alone['cpu_ms']:.2f}×")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    current = BENCHMARKS.read_text()
    if SECTION in current:
        start = current.index(SECTION)
        rest = current[start + len(SECTION):]
        end = rest.find("\n## ")
        current = current[:start] + text.rstrip() + "\n" + (rest[end:] if end >= 0 else "")
    else:
        current = current.rstrip() + "\n\n" + text
    BENCHMARKS.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, help="AGENTOPS_HOME to reuse (default: a temporary one)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--one-step", action="store_true",
                        help="serve without running tools (AGENTOPS_SOR_URL=off): the one-step model "
                             "whose p99 goal is 10 ms; by default the agents act (goal 20 ms)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(args.drive, args.rate, args.duration, args.connections)))
        return 0
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("FEAST_USAGE", "False")
    home = args.home or Path(tempfile.mkdtemp(prefix="two-agents-")) / "home"
    uri, version = prepare(home)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the serving processes read the registry there
    if args.one_step:
        os.environ["AGENTOPS_SOR_URL"] = "off"  # passed to the serving processes by the deployer
    from agentops_pipelines.resources.deployers import LocalProcessDeployer

    deployer = LocalProcessDeployer(state_dir=str(home / "bench-serving"),
                                    inference_log_dir=str(home / "bench-inference-log"), health_timeout_s=300)
    deployed = {agent: deployer.deploy("prod", f"models:/{agent}/{version if agent == AGENTS[0] else 1}",
                                       version if agent == AGENTS[0] else "1") for agent in AGENTS}
    urls = {agent: d.url for agent, d in deployed.items()}
    pgids = {agent: os.getpgid(d.pid) for agent, d in deployed.items()}  # supervisor and server
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    try:
        load(list(urls.values()), args.rate, 3.0, args.connections)  # warm both up at the rate
        for r in range(args.rounds):
            order = list(AGENTS) if r % 2 == 0 else list(reversed(AGENTS))
            for agent in order:
                (result,) = load([urls[agent]], args.rate, args.duration, args.connections, [pgids[agent]])
                rows.append({"agent": agent, "case": "alone", **result})
            for agent, result in zip(AGENTS, load([urls[a] for a in AGENTS], args.rate, args.duration,
                                                  args.connections, [pgids[a] for a in AGENTS]), strict=True):
                rows.append({"agent": agent, "case": "side by side", **result})
            print(f"round {r + 1}: " + ", ".join(f"{x['agent']} {x['case']} p99 {x['p99_ms']:.1f} ms"
                                                 for x in rows[-4:]), flush=True)
    finally:
        for agent in AGENTS:
            deployer.stop("prod", agent=agent)
    text = report(summarize(rows), args, load_before, os.getloadavg()[0],
                  " ".join(["AGENTOPS_HOME=... .venv/bin/python bench/two_agents_serving.py", *sys.argv[1:]]))
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
