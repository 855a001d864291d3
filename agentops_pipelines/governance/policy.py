"""Who may approve each agent's versions, and how many distinct approvals each environment needs.

The approvers file (``approvers.yaml`` at the project root by default; in production a mounted
secret named by ``AGENTOPS_APPROVERS_FILE``) is read by every process that decides: the CLI a
reviewer runs, the approval sensor, the promotion job and the deployment asset. It is never an
environment variable of one process, so a reviewer's shell and the daemon cannot disagree. Change
it by code review: whoever can edit it chooses the approvers.

    agents:
      support_agent:
        approvers:
          alice: "ed25519:<base64 public key>"   # printed by `agentops keygen --reviewer alice`
          bob: "ed25519:..."
        require:            # distinct approvals per environment (default: 1 each)
          staging: 1
          prod: 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agentops_pipelines.governance.signing import parse_public_key, valid_reviewer
from agentops_pipelines.vocabulary import GUARDED_ENVIRONMENTS


class PolicyError(ValueError):
    """The approvers file is missing a field or has a bad one; the message names file and field."""


@dataclass(frozen=True)
class ApprovalPolicy:
    agent: str
    approvers: dict[str, object] = field(default_factory=dict)  # reviewer -> Ed25519 public key
    require: dict[str, int] = field(default_factory=dict)  # environment -> distinct approvals
    source: str = ""

    def required(self, environment: str) -> int:
        return self.require.get(environment, 1)

    def describe(self, environment: str | None = None) -> str:
        names = ", ".join(sorted(self.approvers)) or "nobody"
        needs = "; ".join(f"{env} needs {self.required(env)} of {len(self.approvers)}"
                          for env in ([environment] if environment else GUARDED_ENVIRONMENTS))
        return f"approvers of {self.agent} in {self.source}: {names} ({needs})"


def load_policy(path: Path, agent: str) -> ApprovalPolicy:
    """The policy for ``agent``; an agent the file does not name has no approvers (nothing it
    registers can reach staging or prod)."""
    import yaml

    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise PolicyError(f"{where}: the approvers file does not exist") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("agents", {}), dict):
        raise PolicyError(f"{where}: expected a mapping with a key 'agents'")
    unknown = set(raw) - {"agents"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; expected only 'agents'")
    section = (raw.get("agents") or {}).get(agent)
    if section is None:
        return ApprovalPolicy(agent=agent, source=where)
    prefix = f"{where}: agents.{agent}"
    if not isinstance(section, dict):
        raise PolicyError(f"{prefix}: expected a mapping with 'approvers' and 'require'")
    unknown = set(section) - {"approvers", "require"}
    if unknown:
        raise PolicyError(f"{prefix}: unknown key(s) {sorted(unknown)}")
    approvers: dict[str, object] = {}
    for name, key in (section.get("approvers") or {}).items():
        try:
            approvers[valid_reviewer(str(name))] = parse_public_key(key)
        except ValueError as exc:
            raise PolicyError(f"{prefix}.approvers.{name}: {exc}") from None
    require: dict[str, int] = {}
    for env, count in (section.get("require") or {}).items():
        if env not in GUARDED_ENVIRONMENTS:
            raise PolicyError(f"{prefix}.require.{env}: approvals are required for "
                              f"{', '.join(GUARDED_ENVIRONMENTS)} only")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise PolicyError(f"{prefix}.require.{env}: must be a whole number >= 1, not {count!r}")
        if count > len(approvers):
            raise PolicyError(f"{prefix}.require.{env}: {count} approvals needed but only "
                              f"{len(approvers)} approver(s) configured")
        require[env] = count
    return ApprovalPolicy(agent=agent, approvers=approvers, require=require, source=where)
