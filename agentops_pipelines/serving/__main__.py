"""``python -m agentops_pipelines.serving --model-uri URI --version V --environment ENV ...``"""

import os

# This process's /metrics counts its own requests in its own memory. A multiprocess folder named by
# the parent (Feast names one, in its own environment, in any process that imports it) would make
# prometheus_client keep the values in files there instead: counters that /metrics never shows,
# and, once the process is confined, files it may not write. Removed before prometheus_client loads.
for _name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir"):
    os.environ.pop(_name, None)

from agentops_pipelines.serving.server import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
