"""One tick of ``mlflow_run_sensor`` with 500 new finished MLflow runs (SQLite store).

    .venv/bin/python bench/sensor_tick.py [--runs 500] [--repeat 5]

Logs N runs, each with a tiny pyfunc model named ``agent``, into a fresh AGENTOPS_HOME, then times
the sensor's evaluation from an empty cursor (all N picked up, paged 500 at a time) and from the
cursor it returned (nothing new). Medians over repeats of the tick (the runs are logged once).
"""

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["AGENTOPS_HOME"] = tempfile.mkdtemp()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import dagster as dg
    import mlflow

    from agentops_pipelines.definitions import build_definitions

    defs = build_definitions()
    store = defs.resources["mlflow_store"]
    store.configure()

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    exp = mlflow.set_experiment("support_agent")
    t0 = time.perf_counter()
    for i in range(args.runs):
        with mlflow.start_run(experiment_id=exp.experiment_id):
            mlflow.log_param("i", i)
            mlflow.pyfunc.log_model(name="agent", python_model=Echo(), pip_requirements=["mlflow"])
    print(f"logged {args.runs} runs in {time.perf_counter() - t0:.0f} s")
    sensor = next(s for s in defs.sensors if s.name == "support_agent_mlflow_run_sensor")
    full, empty = [], []
    with dg.instance_for_test() as instance:
        for _ in range(args.repeat):
            ctx = dg.build_sensor_context(instance=instance, resources=defs.resources)
            t = time.perf_counter()
            result = sensor(ctx)
            full.append(time.perf_counter() - t)
            assert len(result.run_requests) == args.runs, len(result.run_requests)
            ctx2 = dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=result.cursor)
            t = time.perf_counter()
            again = sensor(ctx2)
            empty.append(time.perf_counter() - t)
            assert isinstance(again, dg.SkipReason)
    print("\n| tick | median (s) | min (s) | max (s) |\n|---|---|---|---|")
    print(f"| {args.runs} new runs → {args.runs} run requests | {statistics.median(full):.2f} | {min(full):.2f} | {max(full):.2f} |")
    print(f"| next tick, nothing new | {statistics.median(empty):.2f} | {min(empty):.2f} | {max(empty):.2f} |")


if __name__ == "__main__":
    main()
