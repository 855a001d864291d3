"""Signed approval → prod serving the new version, through the canary, on the embedded stack.

    .venv/bin/python bench/approval_to_prod.py [--bake-seconds 60] [--rate 20]

Real components end to end, in a temporary state folder: two registered versions of the support
desk router (v1 promoted and serving prod), a reviewer's Ed25519 key in the approvers file, the
reviewer's signature (`agentops approve` does the same: digests of the model artifacts and the
evaluation report, then signing), one tick of the approval sensor (verifies the envelope and the
audit log, records the approval), then the promotion job it requests (re-verifies, checks the
artifacts digest, staging, the prod canary with its bake time under live traffic, champion). The
clock runs from the reviewer's command to prod serving v2 on every request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def traffic(url: str, rate: float, stop: threading.Event, statuses: list[int]) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not stop.is_set():
        body = json.dumps({"dataframe_records": [{"text": "where is my order", "customer_id": f"C{random.randint(1, 9999):05d}"}]})
        request = urllib.request.Request(f"{url}/invocations", data=body.encode(), headers={"Content-Type": "application/json"})
        try:
            with opener.open(request, timeout=5) as response:
                statuses.append(response.status)
        except Exception:  # noqa: BLE001 - counted as a failure
            statuses.append(0)
        time.sleep(1.0 / rate)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bake-seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second on prod while it bakes")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(AGENTOPS_HOME=str(tmp / "agentops"), AGENTOPS_APPROVERS_FILE=str(tmp / "approvers.yaml"),
                          GX_ANALYTICS_ENABLED="False", FEAST_USAGE="False")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        import dagster as dg
        import yaml

        from agentops_pipelines.definitions import build_definitions
        from agentops_pipelines.governance.approvals import make_decision, submit
        from agentops_pipelines.governance.signing import generate_key, load_private_key
        from agentops_pipelines.operations import PromotionConfig
        from agentops_pipelines.resources.settings import load_settings
        from tests.helpers import AGENT, promoted, register_versions

        public = generate_key(tmp / "alice.pem")
        (tmp / "approvers.yaml").write_text(yaml.safe_dump({"agents": {AGENT: {"approvers": {"alice": public}}}}))
        defs = build_definitions(load_settings())
        store, audit, deployer = defs.resources["mlflow_store"], defs.resources["audit"].store, defs.resources["deployer"]
        client = store.configure()
        v1, v2 = register_versions(store.tracking_uri, 2, audit=audit)
        promoted(audit, v1)
        prod = deployer.deploy("prod", f"models:/{AGENT}/{v1}", v1)
        stop, statuses = threading.Event(), []
        sender = threading.Thread(target=traffic, args=(prod.url, args.rate, stop, statuses), daemon=True)
        sender.start()
        try:
            with dg.instance_for_test() as instance:
                marks = {"start": time.perf_counter()}
                made, envelope = make_decision(client, AGENT, v2, "approved", "alice", load_private_key(tmp / "alice.pem"))
                submit(client, made, envelope)
                marks["signed"] = time.perf_counter()
                sensor = next(s for s in defs.sensors if s.name == f"{AGENT}_approval_sensor")
                result = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
                (request,) = result.run_requests
                marks["sensor tick"] = time.perf_counter()
                # The sensor's request, as its typed config, with this bench's bake time.
                op = f"{AGENT}_promote"
                config = PromotionConfig(**{**request.run_config["ops"][op]["config"], "bake_seconds": args.bake_seconds})
                job = defs.resolve_job_def(f"{AGENT}_promotion_job")
                outcome = job.execute_in_process(instance=instance, run_config=dg.RunConfig(ops={op: config}),
                                                 tags=request.tags, raise_on_error=False)
                marks["prod serves v2"] = time.perf_counter()
            assert outcome.success, "the promotion failed"
            assert deployer.status("prod").version == v2
        finally:
            stop.set()
            sender.join(5)
            for env in ("dev", "staging", "prod"):
                deployer.stop(env)
        names = list(marks)
        steps = ", ".join(f"{b}: {marks[b] - marks[a]:.1f} s" for a, b in zip(names, names[1:], strict=False))
        total = marks[names[-1]] - marks["start"]
        ok = sum(1 for s in statuses if s == 200)
        print(f"signed approval → prod serving v{v2}: {total:.1f} s with a {args.bake_seconds:.0f} s bake "
              f"({steps}); prod traffic: {ok}/{len(statuses)} requests answered 200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
