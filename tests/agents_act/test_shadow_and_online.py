"""Dry-run actions (the shadow challenger's), the live scorers, the shadow comparison's McNemar
test, the per-step report tables and the serving settings of agents that act (issue 12)."""

import pytest
import sqlalchemy as sa

from agentops_pipelines.agent import system_of_record as db
from agentops_pipelines.agent.actions import Actions, Policy
from agentops_pipelines.agent.scorers import golden_cases, live_scores, step_tables
from agentops_pipelines.agent.trajectory import Executor
from agentops_pipelines.serving.acting import ActSettings, flagged, trace_steps
from agentops_pipelines.serving.shadow import Comparison, mcnemar_p


def delivered(sor, above_cents=None):
    q = sa.select(db.orders).where(db.orders.c.status == "delivered")
    if above_cents is not None:
        q = q.where(db.orders.c.amount_cents > above_cents)
    with sor.read() as conn:
        return conn.execute(q.order_by(db.orders.c.order_id).limit(1)).first()


def writes(sor) -> list[int]:
    return [sor.count(t) for t in ("refunds", "tickets", "tool_calls")]


def keyword_challenger(sor):
    """(its router, which records its calls; a challenger acting dry-run on ``sor``), as the worker
    loads one from the registry, minus the loading."""
    from agentops_pipelines.serving.shadow import Challenger
    from tests.agents_act.test_trajectory import _acting_model, _KeywordRouter

    router = _KeywordRouter()
    model = _acting_model(router)
    challenger = Challenger.__new__(Challenger)
    challenger.model, challenger.sor, challenger.version = model, sor, "2"
    challenger.executor = model.executor(Actions(sor, Policy(), dry_run=True))
    return router, challenger


def test_dry_run_plans_writes_and_never_writes(sor):
    dry = Actions(sor, Policy(refund_limit=1_000_000), dry_run=True)
    row = delivered(sor)
    before = writes(sor)
    r = dry.call("request_refund", {"customer_id": row.customer_id, "order_id": row.order_id}, request_id="s-1")
    assert r.outcome == "executed" and r.data["dry_run"] is True
    assert r.data["refund_id"] == "RF-s-1" and r.data["refund_cents"] == row.amount_cents
    again = dry.call("request_refund", {"customer_id": row.customer_id, "order_id": row.order_id}, request_id="s-1")
    assert again.outcome == "executed" and not again.replayed  # nothing was recorded to replay
    handed = dry.call(ESCALATE_CALL[0], {"customer_id": row.customer_id, "reason": "x"}, request_id="s-2")
    assert handed.outcome == "executed" and handed.data["ticket_id"] == "TK-s-2"
    assert writes(sor) == before


ESCALATE_CALL = ("escalate_to_human",)


def test_dry_run_keeps_the_policy_and_the_business_rules(sor):
    big = delivered(sor, above_cents=10_000)
    dry = Actions(sor, Policy(refund_limit=100), dry_run=True)
    r = dry.call("request_refund", {"customer_id": big.customer_id, "order_id": big.order_id}, request_id="s-3")
    assert r.outcome == "needs_handover"
    bad = dry.call("request_refund", {"customer_id": big.customer_id, "order_id": "12"}, request_id="s-4")
    assert bad.outcome == "invalid_arguments" and "order_id" in bad.error
    t = Executor(dry, lambda text, f: ("request_refund", 0.9)).run(
        "s-5", f"refund order #{big.order_id} please", big.customer_id)
    assert t.outcome == "handed_over" and t.tools_called == ["request_refund", "escalate_to_human"]
    assert sor.count("tickets") == 0 and sor.count("refunds", order_id=big.order_id) == 0


def test_live_scorers_need_no_expectations(sor):
    actions = Actions(sor)
    ok = Executor(actions, lambda text, f: ("reset_password", 0.9)).run("l-1", "reset my password", "C00001")
    bad = Executor(actions, lambda text, f: ("update_shipping_address", 0.9)).run("l-2", "I moved", "C00001")
    assert live_scores(ok.to_dict()) == {"policy_compliance": True, "tool_success": True, "completed": True}
    assert live_scores(bad.to_dict())["tool_success"] is False and flagged(bad.to_dict())
    lax = ok.to_dict()
    lax["tool_calls"] = [{"tool": "request_refund", "outcome": "executed", "arguments": {},
                          "data": {"refund_cents": 50_000}}]
    assert live_scores(lax)["policy_compliance"] is False


def test_mcnemar_and_the_verdict():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_p(12, 2) == pytest.approx(0.01293, abs=1e-4)  # the exact binomial, two-sided
    worse = Comparison("1", "2")
    for _ in range(40):
        worse.add(True, True, True)
    for _ in range(12):
        worse.add(True, False, False)
    for _ in range(2):
        worse.add(False, True, False)
    s = worse.summary()
    assert (s["requests"], s["primary_only"], s["challenger_only"], s["verdict"]) == (54, 12, 2, "worse")
    assert s["primary_pass_rate"] > s["challenger_pass_rate"]
    few = Comparison("1", "2")
    few.add(False, True, True)
    assert few.summary()["verdict"] == "too_few"


def test_a_long_shadow_comparison_still_has_a_verdict():
    """Past 1,023 discordant pairs the old p-value summed binomial terms over ``2.0 ** n`` and
    raised OverflowError: the worker's summary, the /metrics counts it feeds and the evidence for
    reviewers all stopped. A challenger that errs on 20% of a day's traffic has thousands."""
    from scipy import stats

    for b, c in ((1200, 1000), (5000, 4700), (30_000, 29_000)):
        assert mcnemar_p(b, c) == pytest.approx(stats.binomtest(c, b + c, 0.5).pvalue, rel=1e-6)
    long = Comparison("1", "2")
    for primary_pass, challenger_pass, n in ((True, True, 8000), (True, False, 1500), (False, True, 1300)):
        for _ in range(n):
            long.add(primary_pass, challenger_pass, True)
    s = long.summary()
    assert s["requests"] == 10_800 and s["verdict"] == "worse" and 0 < s["mcnemar_p"] < 0.05


def test_step_tables_and_trace_steps(sor):
    from agentops_pipelines.agent.scorers import runner

    cases = golden_cases(sor, 40)
    tool_of = {c.case_id: c.expected["tool"] for c in cases}
    executor = Executor(Actions(sor), lambda text, f: ("update_shipping_address", 0.5))
    trajectories = [runner(executor)(c) for c in cases]
    latency, failures = step_tables(trajectories)
    assert set(latency["step"]) >= {"fetch_context", "decide", "extract_arguments", "call_tool", "observe", "answer"}
    row = latency.set_index("step").loc["call_tool"]
    assert row["count"] == 40 and row["errors"] > 0 and 0 < row["error_rate"] <= 1 and row["p99_ms"] >= row["p50_ms"]
    assert failures["count"].is_monotonic_decreasing and (failures["tool"] == "update_shipping_address").all()
    assert len(tool_of) == 40
    from agentops_pipelines.agent.scorers import evaluate_trajectories

    ev = evaluate_trajectories(cases[:10], runner(Executor(Actions(sor, dry_run=True),
                                                           lambda text, f: ("update_shipping_address", 0.5))))
    report = ev.step_markdown()  # what the evaluation report shows
    assert "**Per step**" in report and "**Step failures**" in report and "call_tool" in report
    steps = trace_steps(trajectories[0].to_dict())
    assert [s[0] for s in steps][:4] == ["fetch_context", "decide", "extract_arguments",
                                         "call_tool:update_shipping_address"]
    name, span_type, start, end, details = steps[3]
    assert span_type == "TOOL" and end >= start > 0 and details["inputs"]["tool"] == "update_shipping_address"


def test_act_settings_from_the_environment(tmp_path):
    default = ActSettings.from_environ({"AGENTOPS_HOME": str(tmp_path)})
    assert default.sor_url == f"sqlite:///{tmp_path.resolve() / 'system_of_record' / 'prod' / 'system_of_record.db'}" and default.enabled
    assert not ActSettings.from_environ({"AGENTOPS_SOR_URL": "off"}).enabled
    # A dev server started without a URL acts on dev's own file, never prod's.
    dev = ActSettings.from_environ({"AGENTOPS_HOME": str(tmp_path)}, "dev")
    assert dev.sor_url == f"sqlite:///{tmp_path.resolve() / 'system_of_record' / 'dev' / 'system_of_record.db'}"
    # A Kubernetes pod without its environment's Secret does not act (no throwaway SQLite).
    assert not ActSettings.from_environ({"AGENTOPS_HOME": str(tmp_path)}, "prod", "off").enabled
    assert ActSettings.from_environ({"AGENTOPS_SOR_URL": "sqlite:///x.db"}, "prod", "off").sor_url == "sqlite:///x.db"
    custom = ActSettings.from_environ({"AGENTOPS_SOR_URL": "postgresql://u:secret@h/db",
                                       "AGENTOPS_REFUND_LIMIT": "250", "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "0.5"})
    assert (custom.refund_limit, custom.online_eval_sample_rate) == (250.0, 0.5)
    for bad in ({"AGENTOPS_REFUND_LIMIT": "-1"}, {"AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "2"},
                {"AGENTOPS_REFUND_LIMIT": "lots"}):
        with pytest.raises(ValueError, match="AGENTOPS_"):
            ActSettings.from_environ(bad)


def test_code_location_settings_and_the_serving_allowlist(monkeypatch, tmp_path):
    from agentops_pipelines.resources.deployers import serving_environment
    from agentops_pipelines.resources.settings import load_settings

    monkeypatch.setenv("AGENTOPS_HOME", str(tmp_path))
    monkeypatch.delenv("AGENTOPS_SOR_URL", raising=False)
    monkeypatch.delenv("AGENTOPS_REFUND_LIMIT", raising=False)
    s = load_settings()
    assert s.sor_url.endswith("system_of_record.db") and s.refund_limit == 100.0
    monkeypatch.setenv("AGENTOPS_SOR_URL", "postgresql://agent:pw@db/sor")
    monkeypatch.setenv("AGENTOPS_REFUND_LIMIT", "nope")
    s = load_settings(strict=False)
    assert s.secret_env["sor_url"] == "AGENTOPS_SOR_URL"  # passed as a dagster.EnvVar, never shown
    assert any("AGENTOPS_REFUND_LIMIT" in p for p in s.problems)
    child = serving_environment({"AGENTOPS_SOR_URL": "x", "AGENTOPS_SOR_URL_DEV": "z", "AGENTOPS_REFUND_LIMIT": "5",
                                 "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "0.1", "AGENTOPS_AUDIT_DB_URL": "y"})
    # No system-of-record URL through the allowlist: the deployer adds its environment's own.
    assert set(child) == {"AGENTOPS_REFUND_LIMIT", "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE"}


def test_status_shows_the_shadow_comparison_to_reviewers_marked_unverified():
    from agentops_pipelines.cli import UNVERIFIED, _shadow_note
    from agentops_pipelines.serving.shadow import evidence_tags

    few = Comparison("3", "4")
    for _ in range(40):
        few.add(True, True, True)
    note = _shadow_note(evidence_tags(few.summary()))
    # tags a serving process wrote: context for a reviewer, never evidence (nothing backs them)
    assert note.startswith(f"; shadow ({UNVERIFIED}) vs v3: no_difference over 40 requests"), note
    assert "McNemar p=1.0" in note
    assert _shadow_note({"approval_status": "pending"}) == ""


def test_the_worker_runs_requests_that_arrive_together_as_one_shadow_batch(sor, tmp_path):
    """Requests the evaluation worker reads together are shadowed as one batch (the challenger's
    router asked once, its customers read once), each still compared with its primary, and the
    dry-run challenger writes nothing; a command between requests keeps its place."""
    import socket

    from agentops_pipelines.serving.online_eval import _Worker
    router, challenger = keyword_challenger(sor)
    primary = Executor(Actions(sor), lambda text, f: ("track_order", 0.7))
    row = delivered(sor)
    texts = ["where is my order", f"refund order #{row.order_id} please", "where is it", "track it"]
    jobs = [{"kind": "request", "request_id": f"p-{i}", "shadow": True, "features": {},
             "trajectory": primary.run(f"p-{i}", text, row.customer_id).to_dict()}
            for i, text in enumerate(texts)]
    results, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    worker = _Worker(results, "support_agent", "dev", "", 100.0, None)
    worker.challenger, worker.comparison = challenger, Comparison("1", "2")
    before = writes(sor)
    assert worker.handle_many([*jobs[:3], {"kind": "flush"}, jobs[3]]) is True
    assert router.calls == [3, 1]  # three together, then the one after the command
    summary = worker.comparison.summary()
    assert summary["requests"] == 4 and summary["challenger_errors"] == 0
    assert summary["same_tool"] == 3  # the refund request: the challenger chose request_refund
    assert writes(sor) == before


def _statements(sor):
    """The SQL statements run on ``sor`` (as sent to the driver), collected in a list."""
    seen: list[str] = []
    sa.event.listen(sor.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: seen.append(statement))
    return seen


def _comparable(trajectory: dict) -> dict:
    """A trajectory without its timings (the part two runs of the same request share)."""
    steps = [{k: v for k, v in s.items() if k not in ("latency_ms", "started_ns")} for s in trajectory["steps"]]
    return {**{k: v for k, v in trajectory.items() if k != "latency_ms"}, "steps": steps}


def test_the_challenger_replays_the_primarys_requests_in_one_read_transaction(sor):
    """The challenger takes the customer the primary's fetch_context read (no second read) and
    runs its batch in one read transaction; its trajectories are what reading on its own gives."""
    _, challenger = keyword_challenger(sor)
    primary = Executor(Actions(sor, Policy(refund_limit=1_000_000)), lambda text, f: ("track_order", 0.7))
    row = delivered(sor)
    texts = ["where is my order", f"refund order #{row.order_id} please", "where is it", "refund it"]
    customers = [row.customer_id, row.customer_id, "C99999", "C00002"]  # C99999: no such customer
    primaries = [primary.run(f"r-{i}", t, c).to_dict() for i, (t, c) in enumerate(zip(texts, customers, strict=True))]
    # what the challenger gives reading everything itself, one request at a time
    alone = [challenger.model.trajectories(challenger.executor, {"text": [p["text"]], "customer_id": [p["customer_id"]]},
                                           [f"shadow-{p['request_id']}"])[0].to_dict() for p in primaries]
    statements = _statements(sor)
    replayed = challenger.replay(primaries)
    statements = list(statements)  # what the replay ran
    assert [_comparable(t) for t in replayed] == [_comparable(t) for t in alone]
    handover = replayed[1]["tool_calls"][1]  # dry run: the ticket it would open, none opened
    assert handover["data"]["dry_run"] is True and handover["data"]["ticket_id"] == "TK-shadow-r-1"
    assert replayed[2]["steps"][0]["error"] == "LookupError: customer_id: no customer C99999"
    assert sor.count("tickets") == 0
    # one BEGIN for the batch; a customer read only for C99999, whose context the primary lacks
    assert [q.split()[0] for q in statements].count("BEGIN") == 1, statements
    assert sum(1 for q in statements if "AS open_orders" in q) == 1, statements


def test_a_snapshot_shares_one_transaction_until_a_database_error(sor):
    sor.ensure()  # its schema check is a transaction of its own
    statements = _statements(sor)
    with sor.snapshot():
        with sor.read() as a, sor.read() as b:
            assert a is b
        with sor.snapshot(), sor.read() as c:  # nested: the same transaction
            assert c is a
        with pytest.raises(sa.exc.OperationalError), sor.read() as conn:
            conn.execute(sa.text("select * from no_such_table"))
        with sor.read() as d:  # after a database error: a transaction of its own
            assert d is not a and d.execute(sa.text("select 1")).scalar() == 1
    assert [q.split()[0] for q in statements].count("BEGIN") == 2


def _read(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_the_evaluation_worker_is_background_work():
    """SCHED_IDLE in a session of its own (its own autogroup): the worker runs only on a CPU no
    request wants, gives it up at once, and its CPU does not count against the serving process's
    session."""
    import os
    from pathlib import Path

    from agentops_pipelines.serving.online_eval import EvalWorker

    worker = EvalWorker("support_agent", "dev", "", 100.0, 0.0).start()
    pid = worker._process.pid
    try:
        worker.command({"kind": "flush"}, timeout=60)  # it answers from its loop: set up by then
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the serving process is not
        assert os.getsid(pid) == pid != os.getsid(0)
        # A kernel with autogroups shows "/autogroup-<n> nice <k>"; a task in a cgroup of its own
        # (a container, a CI job under systemd) shows nothing: there autogroups do not apply.
        worker_group = _read(Path(f"/proc/{pid}/autogroup")).split()
        our_group = _read(Path("/proc/self/autogroup")).split()
        if worker_group and our_group:  # its own, at a lower weight
            assert worker_group[0] != our_group[0]
            assert worker_group[-1] == "10"
    finally:
        worker.close()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_request_handed_over_wakes_nothing_until_the_sender_sends_the_queue_as_one_datagram(monkeypatch):
    """Handing a request to online evaluation or shadow is a pickle and an append in memory: no
    datagram (no wake-up of the worker) per request. The sender sends what was queued as one
    datagram, in order; beyond ``MAX_QUEUED`` jobs are dropped and counted. Until 2026-12-05 each
    request was its own datagram: with a challenger in shadow, 200 wake-ups of the worker a
    second added ~1.5 ms to the primary's p99 even when the challenger did nothing."""
    import pickle
    import socket

    from agentops_pipelines.serving import online_eval
    from agentops_pipelines.serving.online_eval import EvalWorker, gather

    serving = EvalWorker("support_agent", "dev", "", 100.0, 0.0)
    serving._jobs, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # no process
    serving._jobs.setblocking(False)
    theirs.setblocking(False)
    for i in range(100):
        assert serving.submit({"request_id": f"r{i}"}) is True
    with pytest.raises(BlockingIOError):
        theirs.recv(1 << 20)  # nothing was sent: the worker would not have woken
    assert serving.send_queued() == 100
    first = theirs.recv(1 << 20)
    with pytest.raises(BlockingIOError):
        theirs.recv(1 << 20)  # one datagram for the hundred
    batch = gather(theirs, first)
    assert [j["request_id"] for j in batch[:3]] == ["r0", "r1", "r2"] and len(batch) == 100

    monkeypatch.setattr(online_eval, "MAX_QUEUED", 3)
    assert [serving.submit({"request_id": f"q{i}"}) for i in range(5)] == [True, True, True, False, False]
    assert serving.dropped == 2
    monkeypatch.setattr(online_eval, "DATAGRAM_BYTES", 1)  # one job per datagram
    assert serving.send_queued() == 3
    assert [len(pickle.loads(theirs.recv(1 << 20))) for _ in range(3)] == [1, 1, 1]

    # Bytes are capped too: requests with the longest texts the server takes cannot pile up.
    monkeypatch.setattr(online_eval, "MAX_QUEUED", 4096)
    monkeypatch.setattr(online_eval, "MAX_QUEUED_BYTES", 20_000)
    long = {"request_id": "l", "trajectory": {"text": "x" * 4096}}
    assert [serving.submit(long) for _ in range(6)] == [True] * 4 + [False] * 2
    assert serving.dropped == 2 + 2
    assert serving.send_queued() == 4  # the queue's bytes start again from nothing
    assert serving.submit(long) is True
    serving._jobs.close()
    theirs.close()


def test_jobs_queued_before_a_command_reach_the_worker_before_it():
    """A real worker process: the requests submitted before a command are scored before the
    command is answered (the command sends the queue first), and the sender thread delivers the
    ones submitted after it within a few of its periods."""
    import time

    from agentops_pipelines.serving.online_eval import SEND_EVERY_S, EvalWorker

    serving = EvalWorker("support_agent", "dev", "", 100.0, 0.0).start()
    trajectory = {"request_id": "t", "text": "where is my order", "customer_id": "c1", "tool": "track_order",
                  "outcome": "resolved", "steps": [], "answer": "On its way."}
    try:
        for i in range(20):
            serving.submit({"request_id": f"r{i}", "version": "1", "trajectory": trajectory, "score": True})
        assert serving.command({"kind": "flush"}, timeout=60)["scored"] == {"1": 20}
        for i in range(5):
            serving.submit({"request_id": f"s{i}", "version": "1", "trajectory": trajectory, "score": True})
        deadline = time.monotonic() + 40 * SEND_EVERY_S
        while serving.poll().get("scored", {}).get("1") != 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving.poll()["scored"] == {"1": 25}
        assert serving.dropped == 0
    finally:
        serving.close()


def test_a_killed_evaluation_worker_is_replaced_and_counting_goes_on(sor):
    """The worker killed (the OOM killer, a challenger's native code crashing): the serving
    process starts a new one, without the challenger, which may be what crashed (the serving
    state forgets it); the counters go on from where they were and the restart is counted.
    Before, online evaluation and shadow stopped for good, and every later job was dropped."""
    import os
    import signal
    import time

    from prometheus_client import CollectorRegistry

    from agentops_pipelines.serving.online_eval import EvalWorker
    from agentops_pipelines.serving.state import ServingState

    serving = EvalWorker("support_agent", "dev", "", 100.0, 0.0)
    registry = CollectorRegistry()
    state = ServingState("dev", evaluator=serving)
    state.shadow_version = "2"  # as if a challenger ran in shadow
    serving.start()
    serving.bind_metrics(registry)
    primary = Executor(Actions(sor), lambda text, f: ("track_order", 0.7))
    trajectory = primary.run("k-0", "where is my order", delivered(sor).customer_id).to_dict()

    def submit(n: int) -> None:
        for i in range(n):
            serving.submit({"request_id": f"k-{i}", "version": "1", "trajectory": trajectory, "score": True})

    def scored() -> float:
        serving.poll()
        return registry.get_sample_value("agentops_online_scored_total",
                                         {"agent": "support_agent", "environment": "dev", "version": "1"}) or 0.0

    try:
        submit(2)
        assert serving.command({"kind": "flush"}, timeout=60)["scored"] == {"1": 2} and scored() == 2
        first = serving._process.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while serving.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving.restarts == 1 and serving._process.pid != first and serving.alive
        assert state.shadow_version is None
        submit(3)
        assert serving.command({"kind": "flush"}, timeout=60)["scored"] == {"1": 3}
        assert scored() == 5  # 2 before, 3 after: neither lost nor counted twice
        assert registry.get_sample_value("agentops_online_eval_worker_restarts_total",
                                         {"agent": "support_agent", "environment": "dev"}) == 1
    finally:
        serving.close()


def test_gather_reads_the_waiting_datagrams_until_a_command_and_survives_a_bad_one():
    import pickle
    import socket

    from agentops_pipelines.serving.online_eval import gather

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def datagram(*jobs) -> bytes:
        return pickle.dumps([pickle.dumps(j) for j in jobs])

    theirs.send(datagram({"request_id": "r1"}, {"request_id": "r2"}))
    theirs.send(b"not a pickle")
    theirs.send(pickle.dumps([b"not a pickle either", pickle.dumps({"request_id": "r3"})]))
    theirs.send(datagram({"kind": "flush"}))
    theirs.send(datagram({"request_id": "r4"}))
    batch = gather(ours, datagram({"request_id": "r0"}))
    assert [j.get("kind", j.get("request_id")) for j in batch] == ["r0", "r1", "r2", "r3", "flush"]
    assert [j["request_id"] for j in gather(ours, ours.recv(1 << 20))] == ["r4"]  # the next batch
    assert gather(ours, datagram({"request_id": "r5"})) == [{"request_id": "r5"}]  # none waiting: no wait
    ours.close()
    theirs.close()


def test_the_worker_runs_a_challenger_in_small_batches_and_pauses_between_slices(sor):
    """A batch of shadowed requests runs through the challenger ``SHADOW_BATCH`` at a time, and
    the worker sleeps once a slice has passed: the CPU it holds comes back to a request's thread
    within a slice, not after the whole batch."""
    import socket

    from agentops_pipelines.serving.online_eval import SHADOW_BATCH, Pacer, _Worker
    router, challenger = keyword_challenger(sor)
    primary = Executor(Actions(sor), lambda text, f: ("track_order", 0.7))
    row = delivered(sor)
    n = 2 * SHADOW_BATCH + 1
    jobs = [{"kind": "request", "request_id": f"p-{i}", "shadow": True, "score": i == 0,
             "trajectory": primary.run(f"p-{i}", "where is my order", row.customer_id).to_dict()}
            for i in range(n)]
    results, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    worker = _Worker(results, "support_agent", "dev", "", 100.0, None)
    worker.challenger, worker.comparison = challenger, Comparison("1", "2")
    worker.pacer = Pacer(slice_s=0.0, pause_s=0.001)  # every piece of work is a whole slice
    worker.handle_many(jobs)
    assert router.calls == [SHADOW_BATCH, SHADOW_BATCH, 1]
    assert worker.comparison.summary()["requests"] == n
    assert worker.pacer.pauses == 1 + 3  # after the one scored request, after each challenger batch

    lazy = Pacer(slice_s=60.0, pause_s=1.0)
    lazy.rest()
    assert lazy.pauses == 0  # within its slice: no pause


def test_the_evaluation_worker_stops_when_the_serving_process_is_killed():
    """Out of the serving process's process group, the worker is no longer reaped with it: it
    notices its parent is gone and stops by itself."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from agentops_pipelines.serving.online_eval import EvalWorker\n"
        "w = EvalWorker('support_agent', 'dev', '', 100.0, 0.0).start()\n"
        "w.command({'kind': 'flush'}, timeout=60)\n"
        "print(w._process.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
        os.kill(parent.pid, signal.SIGKILL)  # as the supervisor's SIGKILL, or the OOM killer
        parent.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "the evaluation worker outlived the serving process"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_failing_challenger_is_counted_in_metrics_and_a_reloaded_one_adds_to_it(sor):
    """A challenger that raises (an LLM challenger whose endpoint is down) fails each request it
    was given; /metrics counts those errors and the outcomes per version pair, so an alert can
    fire on them; loading a challenger again starts a new comparison whose counts add, not reset."""
    import socket

    from prometheus_client import CollectorRegistry

    from agentops_pipelines.serving.online_eval import EvalWorker, _Worker

    class Down:
        version = "2"

        def replay(self, primaries):
            raise ConnectionError("the challenger's LLM endpoint refused the connection")

    primary = Executor(Actions(sor), lambda text, f: ("track_order", 0.7))
    row = delivered(sor)
    jobs = [{"kind": "request", "request_id": f"d-{i}", "shadow": True, "features": {},
             "trajectory": primary.run(f"d-{i}", "where is my order", row.customer_id).to_dict()}
            for i in range(3)]
    registry = CollectorRegistry()
    serving = EvalWorker("support_agent", "prod", "", 100.0)
    serving.bind_metrics(registry)

    def value(name: str, **labels) -> float:
        return registry.get_sample_value(name, {"agent": "support_agent", "environment": "prod",
                                                "primary_version": "1", "challenger_version": "2", **labels})

    results, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    worker = _Worker(results, "support_agent", "prod", "", 100.0, None)
    for comparison_jobs in (jobs, jobs[:1]):  # a first comparison, then the challenger reloaded
        worker.challenger, worker.comparison = Down(), Comparison("1", "2")
        worker.handle_many(comparison_jobs)
        snapshot = {"shadow": worker.state["shadow"]}
        serving._count(snapshot)
        serving._count(snapshot)  # read twice (every scrape polls): counted once
    assert value("agentops_shadow_challenger_errors_total") == 4
    assert value("agentops_shadow_requests_total", outcome="primary_only") == 4  # the primary passed
    assert value("agentops_shadow_requests_total", outcome="both_pass") == 0  # exported at 0
