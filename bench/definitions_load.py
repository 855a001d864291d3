"""How long loading the definitions takes: every run, code-server start and reload pays it.

    .venv/bin/python bench/definitions_load.py [--repeat 7]

Each sample is a fresh interpreter importing ``agentops_pipelines.definitions``; the bare
interpreter start and ``import dagster`` are measured the same way, interleaved with it (so load
from other work on the machine hits all alike). Two code locations are loaded: the default (the
support desk alone, as shipped) and three agents declared (the support desk, BANKING77 and the
150-intent example, from a temporary ``AGENTOPS_AGENTS_DIR`` whose data files are tiny stand-ins:
the load reads no data, it only checks that the files exist). Wall time and CPU time (user + system
of the child) are reported, and each median's ratio to ``import dagster``.

Bytecode: pip compiled dagster's modules when it installed them, and a deployed image's ``pip
install`` compiles ours; a checkout run with ``PYTHONDONTWRITEBYTECODE`` set (as on this machine)
would otherwise compile our modules at every load (~0.04 s in process on 2026-12-05: our part of
the load 0.149 s without bytecode, 0.106 s with it). So the script first compiles the project
(``compileall``, what ``make install`` does) and measures like against like; ``--no-compile``
leaves the bytecode as it is.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = "import agentops_pipelines.definitions as d; d.defs.resolve_all_asset_keys()"


def sample(code: str, env: dict | None = None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def three_agents(folder: Path) -> Path:
    """support_agent, banking77 and clinc150_oos, enabled, reading tiny files in ``folder``."""
    agents = folder / "agents"
    agents.mkdir()
    (folder / "train.csv").write_text("text,category\nhello,a\n")
    (folder / "labels.txt").write_text("a\noos\n")
    (agents / "support_agent.yaml").write_text((ROOT / "agents" / "support_agent.yaml").read_text())
    for name in ("banking77", "clinc150_oos"):
        text = (ROOT / "agents" / f"{name}.yaml").read_text().replace("enabled: false", "enabled: true")
        for old in ("../shared/datasets/banking77/train.csv", "../shared/datasets/clinc150/train.csv",
                    "../shared/datasets/clinc150/test.csv", "../shared/datasets/clinc150/val.csv"):
            text = text.replace(old, str(folder / "train.csv"))
        for old in ("../shared/datasets/banking77/categories.json", "../shared/datasets/clinc150/labels.txt"):
            text = text.replace(old, str(folder / "labels.txt"))
        (agents / f"{name}.yaml").write_text(text)
    return agents


def compile_project() -> None:
    """Our modules' bytecode, as pip writes dagster's at install (only what is stale is rewritten)."""
    import compileall

    for folder in ("agentops_pipelines", "assets", "resources", "sensors"):
        if not compileall.compile_dir(ROOT / folder, quiet=1):
            raise SystemExit(f"compiling {folder} failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="do not compile the project's modules first")
    args = parser.parse_args()
    if not args.no_compile:
        compile_project()
    with tempfile.TemporaryDirectory() as tmp:
        env3 = {**os.environ, "AGENTOPS_AGENTS_DIR": str(three_agents(Path(tmp))),
                "AGENTOPS_HOME": str(Path(tmp) / "home")}  # agents may not read their state folder
        check = "import agentops_pipelines.agents as a; n = len(a.AGENTS); assert n == 3, n"
        subprocess.run([sys.executable, "-c", check], check=True, env=env3)
        cases = {"python -c pass": ("pass", None), "import dagster": ("import dagster", None),
                 "load definitions (1 agent, default)": (LOAD, None),
                 "load definitions (3 agents declared)": (LOAD, env3)}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for i in range(args.repeat):
            names = list(cases)
            names = names[i % len(names):] + names[:i % len(names)]  # rotate the order each round
            for name in names:
                results[name].append(sample(*cases[name]))
    heavy = sample("import sys, agentops_pipelines.definitions; "
                   "bad = [m for m in ('pandas', 'numpy', 'mlflow', 'feast', 'evidently', 'great_expectations', 'sklearn') if m in sys.modules]; "
                   "sys.exit(1 if bad else 0)")[0]
    base_wall = statistics.median(w for w, _ in results["import dagster"])
    base_cpu = statistics.median(c for _, c in results["import dagster"])
    print("| what | wall median (s) | min | max | CPU median (s) | wall / import dagster | CPU / import dagster |")
    print("|---|---|---|---|---|---|---|")
    for name, xs in results.items():
        walls, cpus = [w for w, _ in xs], [c for _, c in xs]
        print(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} | "
              f"{statistics.median(cpus):.2f} | {statistics.median(walls) / base_wall:.2f} | "
              f"{statistics.median(cpus) / base_cpu:.2f} |")
    print(f"\nheavy libraries kept out of the load: yes ({heavy:.2f} s check)")


if __name__ == "__main__":
    main()
