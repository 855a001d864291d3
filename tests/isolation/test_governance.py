"""Approvals, audit entries and the CLI with two agents: one agent's approver cannot approve the
other's versions (at the CLI, or by a signed tag the approval sensor verifies), and every
command that acts names its agent."""

from __future__ import annotations

import dagster as dg

from agentops_pipelines.cli import main
from agentops_pipelines.governance.approvals import make_decision, submit
from agentops_pipelines.vocabulary import DECISION_TAG_PREFIX
from tests.helpers import register_versions
from tests.isolation.conftest import A, B


def evaluate(defs, instance, agent: str, name: str, **resources):
    """(run requests, skip message) of one tick of ``agent``'s sensor ``name``, as the daemon runs it."""
    sensor = next(s for s in defs.sensors if s.name == f"{agent}_{name}")
    ctx = dg.build_sensor_context(instance=instance, definitions=defs, resources={**defs.resources, **resources})
    data = sensor.evaluate_tick(ctx)
    return list(data.run_requests or []), data.skip_message


def test_one_agents_approver_cannot_approve_the_other(defs, instance, approvers, capsys):
    store, audit = defs.resources["mlflow_store"], defs.resources["audit"].store
    client = store.configure()
    (a1,) = register_versions(store.tracking_uri, 1, name=A, audit=audit)
    (b1,) = register_versions(store.tracking_uri, 1, name=B, audit=audit)

    # at the CLI: refused at once, nothing recorded
    assert main(["approve", "--agent", A, a1, "--reviewer", "bob"]) == 2
    assert "'bob' is not an approver of support_agent" in capsys.readouterr().err
    assert not [k for k in client.get_model_version(A, a1).tags if k.startswith(DECISION_TAG_PREFIX)]

    # a signed decision pasted as a tag: bob's valid signature, about A's version
    made, envelope = make_decision(client, A, a1, "approved", "bob", approvers.key("bob"))
    submit(client, made, envelope)
    # and bob's approval of his own agent's version 1 (the same number)
    approvers.decide(client, b1, "bob", agent=B)
    a_requests, a_note = evaluate(defs, instance, A, "approval_sensor")
    assert a_requests == [] and "refused" in a_note
    (b_request,) = evaluate(defs, instance, B, "approval_sensor")[0]
    assert b_request.tags["agentops/agent"] == B and b_request.tags["agentops/reviewer"] == "bob"
    assert list(b_request.run_config["ops"]) == [f"{B}_promote"]

    assert [e.action for e in audit.entries(A)] == ["register", "approval_refused"]
    refused = audit.entries(A)[-1]
    assert "bob" in refused.reason and refused.version == a1
    assert [e.action for e in audit.entries(B)] == ["register", "approve"]
    assert {e.agent for e in audit.entries()} == {A, B}
    assert audit.verify().ok


def test_commands_that_act_name_their_agent(defs, approvers, capsys):
    store, audit = defs.resources["mlflow_store"], defs.resources["audit"].store
    (b1,) = register_versions(store.tracking_uri, 1, name=B, audit=audit)
    # two agents: approve, reject and backfill need --agent (or the positional agent)
    for command in (["approve", b1, "--reviewer", "bob"], ["reject", b1, "--reviewer", "bob"],
                    ["backfill", "--from", "2026-11-01", "--to", "2026-11-02"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "2 agents (support_agent, billing_agent): name one with --agent" in err, command
    assert main(["approve", "--agent", "nobody", b1, "--reviewer", "bob"]) == 2
    assert "unknown agent 'nobody'" in capsys.readouterr().err
    assert main(["approve", A, b1, "--agent", B, "--reviewer", "bob"]) == 2
    assert "differ" in capsys.readouterr().err
    # status: every agent, or the one named; each line is that agent's own
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"{A}\n" in out and f"{B}\n" in out
    assert main(["status", "--agent", B]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{B}\n") and A not in out and f"v{b1}:" in out
    # audit: one agent's entries, the whole chain verified
    assert main(["audit", "--agent", B]) == 0
    out = capsys.readouterr().out
    assert "register" in out and f" {A}" not in out
    assert main(["audit", "--agent", B, "--served"]) == 0
    assert A not in capsys.readouterr().out
