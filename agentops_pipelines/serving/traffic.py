"""Traffic splitting between the stable and the canary version, and recent outcomes per role.

The split is sticky: a request goes to the canary when ``bucket(key) < canary_share``, where the key
is the request's ``customer_id`` (so a customer always sees the same side while the share holds,
and raising the share only moves customers from stable to canary, never back) or, for a request
without one, its request id. ``bucket`` is an unkeyed, process-independent hash (BLAKE2b), so
every replica and every restart splits the same way.

``OutcomeRing`` keeps the last ``capacity`` request outcomes in memory for ``GET /admin/stats``
(bake-time health checks); Prometheus has the long-term view.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from typing import Any

STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)
_SCALE = float(1 << 64)


def bucket(key: str) -> float:
    """A stable, uniform number in [0, 1) for ``key``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def goes_to_canary(share: float, customer_id: Any, request_id: str) -> bool:
    """True when this request belongs on the canary side of a ``share`` split."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    key = request_id if _missing(customer_id) else "c:" + str(customer_id)
    return bucket(key) < share


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


class OutcomeRing:
    """A bounded ring of ``(time, role, version, status, latency_ms)`` for recent-window stats."""

    def __init__(self, capacity: int = 100_000, clock=time.monotonic):
        self._items: deque[tuple[float, str, str, int, float]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._clock = clock

    def add(self, role: str, version: str, status: int, latency_ms: float) -> None:
        item = (self._clock(), role, version, status, latency_ms)
        with self._lock:
            self._items.append(item)

    def stats(self, window_s: float, versions: dict[str, str | None]) -> dict[str, Any]:
        """Per role in ``versions`` ({role: current version or None}) over the last ``window_s``
        seconds, counting only requests served by the role's current version: requests (all),
        client_errors (4xx), served (the others: answered, or failed by the server), errors
        (5xx), error_rate (errors / served), p50_ms and p99_ms (of the served requests).

        Client errors say nothing about a version's health (any client can send garbage, and it
        is refused before the model): they are neither in the error rate nor in the latencies."""
        now = self._clock()
        since = now - window_s
        with self._lock:
            items = list(self._items)
        oldest = items[0][0] if items else now
        latencies: dict[str, list[float]] = {role: [] for role in versions}
        errors = dict.fromkeys(versions, 0)
        client = dict.fromkeys(versions, 0)
        for t, role, version, status, latency in reversed(items):
            if t < since:
                break
            if role not in versions or versions[role] != version:
                continue
            if 400 <= status < 500:
                client[role] += 1
                continue
            latencies[role].append(latency)
            if status >= 500:
                errors[role] += 1
        out: dict[str, Any] = {}
        for role, version in versions.items():
            if version is None:
                out[role] = None
                continue
            values = sorted(latencies[role])
            n = len(values)
            out[role] = {
                "version": version,
                "requests": n + client[role],
                "served": n,
                "errors": errors[role],
                "client_errors": client[role],
                "error_rate": round(errors[role] / n, 6) if n else 0.0,
                "p50_ms": round(_quantile(values, 0.50), 3) if n else None,
                "p99_ms": round(_quantile(values, 0.99), 3) if n else None,
            }
        out["covered_s"] = round(min(window_s, now - oldest), 3)
        return out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
