"""Approvals that prove who approved what, tried as an adversary would, on a real MLflow store, the
real audit log and real Ed25519 keys.

On the old code each attack below succeeded: a bare `approval_status=approved` tag naming an
approver promoted the version; the eligibility check trusted `evaluation_gate`, `frozen` and
`rolled_back` tags; `AGENTOPS_APPROVERS` in one process's environment decided who approves.
"""


from agentops_pipelines.vocabulary import DECISION_TAG_PREFIX, VersionTag
from tests.helpers import AGENT, evaluate, promoted, register_versions


def actions(audit, version):
    return [(e.action, e.actor) for e in audit.entries(AGENT, version=version)]


def test_a_signed_approval_by_an_approver_promotes(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    reviewers.decide(client, v, "alice")
    requests, cursor, _ = evaluate(defs, instance, "approval_sensor")
    assert [{k: r.run_config["ops"][f"{AGENT}_promote"]["config"][k] for k in ("version", "target")}
            for r in requests] == [{"version": v, "target": "prod"}]
    assert requests[0].tags["agentops/environment"] == "prod"
    assert ("approve", "alice") in actions(audit, v)
    approve = next(e for e in audit.entries(AGENT, version=v) if e.action == "approve")
    assert approve.details["envelope"] == client.get_model_version(AGENT, v).tags[DECISION_TAG_PREFIX + "alice"]
    # the next tick, or a restarted daemon with the same cursor, repeats nothing
    again, _, skip = evaluate(defs, instance, "approval_sensor", cursor=cursor)
    assert again == [] and skip == "no new decision"
    # even with no cursor at all (a lost cursor) the decision is not recorded twice
    evaluate(defs, instance, "approval_sensor")
    assert actions(audit, v).count(("approve", "alice")) == 1


def test_a_bare_tag_naming_an_approver_is_a_request_not_an_approval(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    for key, value in {VersionTag.STATUS: "approved", VersionTag.REVIEWER: "alice",
                       VersionTag.DECIDED_AT: "2026-12-01T10:00:00+00:00"}.items():
        client.set_model_version_tag(AGENT, v, key, value)  # anyone with MLflow write access can do this
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    assert ("approve", "alice") not in actions(audit, v)
    refused = [e for e in audit.entries(AGENT, version=v) if e.action == "approval_refused"]
    assert len(refused) == 1 and "unsigned approved tag naming 'alice'" in refused[0].reason
    assert "agentops approve" in client.get_model_version(AGENT, v).tags[VersionTag.REFUSAL]


def test_an_envelope_signed_with_another_key_is_refused(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    reviewers.decide(client, v, "alice", key_of="mallory")  # mallory signs a statement naming alice
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    refused = [e for e in audit.entries(AGENT, version=v) if e.action == "approval_refused"]
    assert "no valid signature by 'alice'" in refused[0].reason
    assert ("approve", "alice") not in actions(audit, v)


def test_a_non_approver_signature_and_a_replayed_envelope_are_refused(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    v1, v2 = register_versions(uri, 2, audit=audit)
    reviewers.decide(client, v1, "mallory")  # a real signature, but mallory is no approver
    envelope = reviewers.decide(client, v2, "alice")
    client.set_model_version_tag(AGENT, v1, DECISION_TAG_PREFIX + "alice", envelope)  # v2's approval copied to v1
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert [r.run_config["ops"][f"{AGENT}_promote"]["config"]["version"] for r in requests] == [v2]
    reasons = " | ".join(e.reason for e in audit.entries(AGENT, version=v1) if e.action == "approval_refused")
    assert "'mallory' is not an approver" in reasons and f"models:/{AGENT}/{v2}, not models:/{AGENT}/{v1}" in reasons


def test_tags_cannot_unfreeze_or_unroll_a_version_nor_fake_its_gate(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    frozen, rolled, unregistered = register_versions(uri, 2, audit=audit) + register_versions(uri, 1)
    audit.record("freeze", AGENT, actor="drift_sensor", version=frozen, environment="prod", reason="drift 0.6")
    audit.record("rollback", AGENT, actor="prometheus_alert_sensor", version=rolled, environment="prod",
                 reason="AgentHighErrorRate firing")
    for v in (frozen, rolled, unregistered):
        client.set_model_version_tag(AGENT, v, VersionTag.FROZEN, "false")
        client.delete_model_version_tag(AGENT, v, VersionTag.ROLLED_BACK) if VersionTag.ROLLED_BACK in (
            client.get_model_version(AGENT, v).tags) else None
        client.set_model_version_tag(AGENT, v, VersionTag.GATE, "passed")
        reviewers.decide(client, v, "alice")
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    refusal = {v: client.get_model_version(AGENT, v).tags[VersionTag.REFUSAL] for v in (frozen, rolled, unregistered)}
    assert "frozen" in refusal[frozen] and "rolled back" in refusal[rolled]
    assert "no registration recorded by the pipeline" in refusal[unregistered]


def test_the_approver_list_comes_from_the_file_not_a_process_environment(defs, instance, setup, reviewers, monkeypatch):
    client, audit, uri = setup
    monkeypatch.setenv("AGENTOPS_APPROVERS", "mallory")  # the old way: any process could name approvers
    (v,) = register_versions(uri, 1, audit=audit)
    reviewers.decide(client, v, "mallory")
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    assert ("approve", "mallory") not in actions(audit, v)


def test_prod_needs_two_distinct_approvers(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice", "bob", "carol"], require={"staging": 1, "prod": 2})
    (v,) = register_versions(uri, 1, audit=audit)
    reviewers.decide(client, v, "alice")
    requests, cursor, _ = evaluate(defs, instance, "approval_sensor")
    assert [r.run_config["ops"][f"{AGENT}_promote"]["config"]["target"] for r in requests] == ["staging"]
    assert client.get_model_version(AGENT, v).tags[VersionTag.STATUS] == "approved for staging"
    reviewers.decide(client, v, "alice")  # alice again: the same approver twice is still one
    requests, cursor, _ = evaluate(defs, instance, "approval_sensor", cursor=cursor)
    assert requests == [] or [r.run_config["ops"][f"{AGENT}_promote"]["config"]["target"] for r in requests] == ["staging"]
    reviewers.decide(client, v, "bob")
    requests, _, _ = evaluate(defs, instance, "approval_sensor", cursor=cursor)
    assert [r.run_config["ops"][f"{AGENT}_promote"]["config"]["target"] for r in requests] == ["prod"]
    assert requests[0].tags["agentops/reviewer"] == "alice,bob"


def test_a_signed_rejection_vetoes_and_an_edit_of_the_report_voids_approvals(defs, instance, setup, reviewers):
    from agentops_pipelines.governance.approvals import record_registration

    client, audit, uri = setup
    reviewers.configure(["alice", "bob"])
    v1, v2 = register_versions(uri, 2, audit=audit)
    reviewers.decide(client, v1, "alice")
    reviewers.decide(client, v1, "bob", decision="rejected")
    reviewers.decide(client, v2, "alice")
    # v2 is re-evaluated: a new report, registered anew (as the re-evaluation job does)
    run_id = client.get_model_version(AGENT, v2).run_id
    client.log_dict(run_id, {"accuracy": 0.5}, "evaluation/summary.json")
    record_registration(client, audit, AGENT, v2, run_id, gate_passed=True, actor="registered_version:test")
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    tags1, tags2 = (client.get_model_version(AGENT, v).tags for v in (v1, v2))
    assert tags1[VersionTag.STATUS] == "rejected (signed)" and "rejected by bob" in tags1[VersionTag.REFUSAL]
    assert tags2[VersionTag.STATUS] == "pending approvals"


def test_a_reviewer_in_the_mlflow_ui_can_paste_a_signed_tag(defs, instance, setup, reviewers, capsys):
    from agentops_pipelines.cli import main

    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    assert main(["approve", AGENT, v, "--reviewer", "alice", "--print"]) == 0
    out = capsys.readouterr().out
    key = out.split("Tag key:")[1].split()[0]
    value = out.split("Tag value:")[1].splitlines()[0].strip()
    assert DECISION_TAG_PREFIX + "alice" not in client.get_model_version(AGENT, v).tags  # printed, not submitted
    client.set_model_version_tag(AGENT, v, key, value)  # what the reviewer pastes in the MLflow UI
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert len(requests) == 1 and ("approve", "alice") in actions(audit, v)


def test_promoted_history_is_read_from_the_audit_log(defs, setup, reviewers):
    from agentops_pipelines.governance.eligibility import last_stable_version, served

    client, audit, uri = setup
    v1, v2, v3 = register_versions(uri, 3, audit=audit)
    for v in (v1, v2, v3):
        promoted(audit, v)
        client.set_model_version_tag(AGENT, v, VersionTag.PROMOTED_PROD, "2026-01-01")
    audit.record("rollback", AGENT, actor="test", version=v3, environment="prod", reason="alert",
                 details={"to_version": v2})
    assert last_stable_version(audit.entries(), AGENT, exclude={v2}) == v1
    rows = served(audit.entries(), AGENT)
    assert [(r["environment"], r["version"], r["how"]) for r in rows] == [
        ("prod", v1, "promote"), ("prod", v2, "promote"), ("prod", v3, "promote"), ("prod", v2, "rollback")]
    assert rows[-1]["until"] == "now" and rows[0]["approved_by"] == "alice"


def test_a_signed_rejection_of_a_serving_version_is_refused_not_applied(defs, instance, setup, reviewers):
    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    promoted(audit, v)
    reviewers.decide(client, v, "alice", decision="rejected")  # put on the tag directly, past the CLI
    evaluate(defs, instance, "approval_sensor")
    assert ("reject", "alice") not in actions(audit, v)
    refused = [e.reason for e in audit.entries(AGENT, version=v) if e.action == "approval_refused"]
    assert refused and "serves in prod" in refused[0] and "roll it back" in refused[0]


def test_a_replayed_older_approval_does_not_undo_a_later_rejection(defs, instance, setup, reviewers):
    from agentops_pipelines.governance.approvals import submit
    from agentops_pipelines.governance.signing import Decision, sign

    client, audit, uri = setup
    reviewers.configure(["alice"])
    (v,) = register_versions(uri, 1, audit=audit)
    tags = client.get_model_version(AGENT, v).tags
    digests = {"artifacts_sha256": tags[VersionTag.ARTIFACTS_SHA256], "report_sha256": tags[VersionTag.REPORT_SHA256]}
    approve = Decision(AGENT, v, "approved", "alice", decided_at="2026-12-01T09:00:00+00:00", **digests)
    reject = Decision(AGENT, v, "rejected", "alice", decided_at="2026-12-01T10:00:00+00:00", **digests)
    key = reviewers.key("alice")
    submit(client, reject, sign(reject, key))
    evaluate(defs, instance, "approval_sensor")
    submit(client, approve, sign(approve, key))  # the older approval, never seen before, put back
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    assert "rejected by alice" in client.get_model_version(AGENT, v).tags[VersionTag.REFUSAL]
