"""Rollouts: canary → bake time with health checks → full, or back to what served before.

Pure policy (``health_problem``) plus one loop (``rollout``) over a deployer; no Dagster here, so
the same code serves the deployment asset, the promotion job and tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RolloutPolicy:
    canary_share: float = 0.1  # share of traffic on the new version while it bakes
    bake_seconds: float = 60.0  # how long the canary must stay healthy
    check_interval_seconds: float = 5.0
    max_error_rate: float = 0.05  # server errors / requests on the canary
    max_p99_ms: float = 250.0
    min_requests: int = 0  # below this many canary requests the health check cannot judge

    def __post_init__(self):
        if not 0.0 < self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be in (0, 1], got {self.canary_share}")


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


def health_problem(canary: dict | None, policy: RolloutPolicy) -> str | None:
    """Why the canary is unhealthy, or None. ``canary`` is the deployer's stats for the canary role."""
    if not canary:
        return None
    requests = int(canary.get("requests", 0))
    if requests < max(policy.min_requests, 1):
        return None
    error_rate = float(canary.get("error_rate", 0.0))
    if error_rate > policy.max_error_rate:
        return f"canary error rate {error_rate:.1%} over {requests} requests exceeds {policy.max_error_rate:.1%}"
    p99 = canary.get("p99_ms")
    if p99 is not None and float(p99) > policy.max_p99_ms:
        return f"canary p99 latency {float(p99):.1f} ms exceeds {policy.max_p99_ms:.0f} ms"
    return None


def rollout(deployer, environment: str, model_uri: str, version: str, policy: RolloutPolicy | None,
            log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> RolloutResult:
    """Deploy ``version``: straight to full without a policy or a running stable version, else canary first."""
    current = deployer.status(environment)
    previous = current.version if current else None
    if policy is None or current is None or policy.canary_share >= 1.0 or previous == str(version):
        deployed = deployer.deploy(environment, model_uri, str(version))
        log(f"{environment}: version {version} serving (previous: {previous or 'none'})")
        return RolloutResult(environment, str(version), previous, "full", "direct deploy", deployed.url)

    deployed = deployer.deploy_canary(environment, model_uri, str(version), policy.canary_share)
    log(f"{environment}: canary version {version} on {policy.canary_share:.0%} of traffic beside {previous}")
    checks: list[dict] = []
    waited = 0.0
    while waited < policy.bake_seconds:
        step = min(policy.check_interval_seconds, policy.bake_seconds - waited)
        sleep(step)
        waited += step
        stats = deployer.stats(environment, max(step, 1.0))
        checks.append({"after_s": round(waited, 1), **{k: v for k, v in stats.items() if isinstance(v, dict)}})
        problem = health_problem(stats.get("canary"), policy)
        if problem:
            deployer.abort_canary(environment)
            log(f"{environment}: canary {version} aborted, {previous} keeps serving: {problem}")
            return RolloutResult(environment, str(version), previous, "rolled_back", problem, deployed.url, checks)
    deployed = deployer.promote_canary(environment)
    log(f"{environment}: version {version} healthy for {policy.bake_seconds:.0f} s, now serving all traffic")
    return RolloutResult(environment, str(version), previous, "full", f"canary healthy for {policy.bake_seconds:.0f} s",
                         deployed.url, checks)
