"""Rollouts: canary → bake time with health checks → full, or back to what served before.

Pure policy (``health_problem``, ``enough_traffic``) plus one loop (``rollout``) over a deployer;
no Dagster here, so the same code serves the deployment asset, the promotion job and tests.

A rollout acts on one agent: the one ``model_uri`` names (``models:/<agent>/<version>``), or
``agent`` when given. Every deployer call names that agent, so a rollout of one agent never reads,
bakes, aborts or promotes another agent's serving process in the same environment.

The canary's health is decided on what the server did, never on what clients sent: server errors
(5xx) over the requests it served, and its p99 latency. Client errors (4xx: bad input, refused
before the model) count for nothing, so no client can fail a canary by sending garbage. And a
canary is judged only once it has served ``min_requests`` requests (counted over the whole bake):
with too little traffic it keeps baking past ``bake_seconds``, up to ``max_bake_seconds``, and is
then aborted with that reason. It is never promoted for lack of evidence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_REGISTERED = re.compile(r"^models:/([^/@]+)")


def agent_of(model_uri: str) -> str | None:
    """The registered model (the agent) ``model_uri`` names: ``models:/<agent>/...``; else None."""
    match = _REGISTERED.match(model_uri)
    return match.group(1) if match else None


@dataclass(frozen=True)
class RolloutPolicy:
    canary_share: float = 0.1  # share of traffic on the new version while it bakes
    bake_seconds: float = 60.0  # how long the canary must stay healthy
    check_interval_seconds: float = 5.0
    max_error_rate: float = 0.05  # server errors / requests on the canary
    # failed LLM calls / LLM calls on the canary (an LLM agent answers a failed call with a
    # hand-over, so its requests succeed): the threshold of the AgentLLMCallFailures alert
    max_llm_failure_rate: float = 0.1
    max_p99_ms: float = 250.0
    min_requests: int = 20  # requests the canary must serve (4xx not counted) before it is judged
    max_bake_seconds: float | None = None  # keep baking this long for min_requests (default 4x bake)

    def __post_init__(self):
        if not 0.0 < self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be in (0, 1], got {self.canary_share}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be at least 1, got {self.min_requests}")

    @property
    def deadline_seconds(self) -> float:
        if self.max_bake_seconds is not None:
            return max(self.bake_seconds, self.max_bake_seconds)
        return max(4 * self.bake_seconds, self.bake_seconds + 60.0)


@dataclass
class RolloutResult:
    environment: str
    version: str
    previous_version: str | None
    outcome: str  # "full" or "rolled_back"
    reason: str
    url: str = ""
    checks: list[dict] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.outcome == "full"


def served_requests(canary: dict | None) -> int:
    """Requests the canary served (answered or failed by the server), client errors excluded."""
    if not canary:
        return 0
    if canary.get("served") is not None:
        return int(canary["served"])
    return max(0, int(canary.get("requests") or 0) - int(canary.get("client_errors") or 0))


def enough_traffic(canary: dict | None, policy: RolloutPolicy) -> bool:
    return served_requests(canary) >= policy.min_requests


def health_problem(canary: dict | None, policy: RolloutPolicy) -> str | None:
    """Why the canary is unhealthy, or None (healthy so far, or too few requests to say: see
    ``enough_traffic``). ``canary`` is the deployer's stats for the canary role."""
    if not canary:
        return None
    served = served_requests(canary)
    if served < policy.min_requests:
        return None
    errors = int(canary.get("errors") or 0)
    error_rate = errors / served
    if error_rate > policy.max_error_rate:
        return (f"canary error rate {error_rate:.1%} (server errors) over {served} requests exceeds "
                f"{policy.max_error_rate:.1%}")
    llm_problem = _llm_failure_problem(canary, policy)
    if llm_problem:
        return llm_problem
    p99 = canary.get("p99_ms")
    if p99 is not None and float(p99) > policy.max_p99_ms:
        return f"canary p99 latency {float(p99):.1f} ms exceeds {policy.max_p99_ms:.0f} ms"
    return None


def _llm_failure_problem(canary: dict, policy: RolloutPolicy) -> str | None:
    """Why the canary's LLM calls make it unhealthy (``llm_calls``/``llm_failures`` in its stats,
    for an LLM agent), or None. Judged from ``min_requests`` calls on, like the error rate. An
    endpoint outage fails the stable version's calls too: the canary is still not promoted, since
    nothing can be judged about it while its calls fail."""
    calls, failures = int(canary.get("llm_calls") or 0), int(canary.get("llm_failures") or 0)
    if calls < policy.min_requests or failures / calls <= policy.max_llm_failure_rate:
        return None
    reasons = canary.get("llm_failure_reasons") or {}
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (f"canary LLM calls failing: {failures} of {calls} ({failures / calls:.1%}) exceed "
            f"{policy.max_llm_failure_rate:.1%}" + (f" ({why})" if why else "")
            + "; each was answered with a hand-over")


def rollout(deployer, environment: str, model_uri: str, version: str, policy: RolloutPolicy | None,
            log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
            agent: str | None = None) -> RolloutResult:
    """Deploy ``version``: straight to full without a policy or a running stable version, else canary first."""
    named = agent_of(model_uri)
    if agent and named and named != agent:
        raise ValueError(f"{model_uri} is a version of {named!r}, not of {agent!r}")
    agent = agent or named
    current = deployer.status(environment, agent=agent)
    previous = current.version if current else None
    if policy is None or current is None or policy.canary_share >= 1.0 or previous == str(version):
        deployed = deployer.deploy(environment, model_uri, str(version))
        log(f"{environment}: version {version} serving (previous: {previous or 'none'})")
        return RolloutResult(environment, str(version), previous, "full", "direct deploy", deployed.url)

    deployed = deployer.deploy_canary(environment, model_uri, str(version), policy.canary_share)
    log(f"{environment}: canary version {version} on {policy.canary_share:.0%} of traffic beside {previous}")
    checks: list[dict] = []
    waited, served, enough = 0.0, 0, False
    deadline = policy.deadline_seconds
    while True:
        if waited >= policy.bake_seconds:
            if enough:
                break
            if waited >= deadline:
                problem = (f"canary served {served} requests in {waited:.0f} s, fewer than the "
                           f"{policy.min_requests} needed to judge it: not promoted")
                deployer.abort_canary(environment, agent=agent)
                log(f"{environment}: canary {version} aborted, {previous} keeps serving: {problem}")
                return RolloutResult(environment, str(version), previous, "rolled_back", problem, deployed.url, checks)
        limit = policy.bake_seconds if waited < policy.bake_seconds else deadline
        step = max(min(policy.check_interval_seconds, limit - waited), 0.001)
        sleep(step)
        waited += step
        stats = deployer.stats(environment, max(waited, 1.0), agent=agent)  # the whole bake so far
        checks.append({"after_s": round(waited, 1), **{k: v for k, v in stats.items() if isinstance(v, dict)}})
        canary = stats.get("canary")
        served, enough = served_requests(canary), enough_traffic(canary, policy)
        problem = health_problem(canary, policy)
        if problem:
            deployer.abort_canary(environment, agent=agent)
            log(f"{environment}: canary {version} aborted, {previous} keeps serving: {problem}")
            return RolloutResult(environment, str(version), previous, "rolled_back", problem, deployed.url, checks)
        if waited >= policy.bake_seconds and not enough:
            log(f"{environment}: canary {version} served {served} of {policy.min_requests} requests: baking on")
    deployed = deployer.promote_canary(environment, agent=agent)
    log(f"{environment}: version {version} healthy for {waited:.0f} s over {served} requests, now serving all traffic")
    return RolloutResult(environment, str(version), previous, "full",
                         f"canary healthy for {waited:.0f} s over {served} requests", deployed.url, checks)
