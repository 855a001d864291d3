"""Assets' results as data: a JSON record in the lake per materialization, loaded downstream.

An asset that hands a result on (the trained run, the evaluation's verdict, the registered version)
returns it as its value; this IO manager writes it as the lake record
``<agent>/<asset>/<partition>/<run id>.json`` (``resources/lake.py``) and the assets and checks
downstream receive it as an input. Materialization metadata is for people in the UI; nothing
reads it back.

Which record an input gets:

- the upstream ran in this run's plan: the record of the run that produced it (this run, or the
  run a re-execution takes it from). Two re-evaluations running at once each register the model
  they evaluated, whichever finished last;
- the upstream is not part of the run (a re-evaluation does not train; a deploy does not
  register): its current record, the newest written;
- never materialized: None.
"""

import dagster as dg

from agentops_pipelines.resources.lake import UNPARTITIONED, LakeResource

#: The resource key of the IO manager, for the assets that use it.
LAKE_IO_MANAGER = "lake_io_manager"


def record_table(key: dg.AssetKey) -> str:
    """The lake table of an asset's records: its key's path (``support_agent/evaluation_report``)."""
    return "/".join(key.path)


def _partition(context: dg.OutputContext | dg.InputContext) -> str:
    return context.asset_partition_key if context.has_asset_partitions else UNPARTITIONED


def producing_run(context: dg.InputContext) -> str | None:
    """The run whose output this input is, when the upstream step is in this run's plan (Dagster
    knows it: this run, or the parent of a re-execution); None when the upstream asset is loaded
    from outside the run (Dagster then gives a placeholder, which names no run)."""
    upstream = context.upstream_output
    try:
        run_id = upstream.run_id if upstream is not None else None
    except dg.DagsterInvariantViolationError:
        return None
    return run_id if run_id and context.instance.has_run(run_id) else None


class LakeIOManager(dg.ConfigurableIOManager):
    """JSON records in the lake at ``root``; see the module docstring for which record an input
    gets. (The root, not a nested LakeResource: Dagster 1.13 warns about its own deprecated API at
    every run that initializes a nested resource.)"""

    root: str

    @property
    def lake(self) -> LakeResource:
        return LakeResource(root=self.root)

    def handle_output(self, context: dg.OutputContext, obj: dict | None) -> None:
        if obj is None:
            return
        path = self.lake.write_record(record_table(context.asset_key), obj, context.run_id, _partition(context))
        context.add_output_metadata({"record": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> dict | None:
        return self.lake.read_record(record_table(context.asset_key), _partition(context), producing_run(context))
