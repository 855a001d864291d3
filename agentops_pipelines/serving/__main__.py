"""``python -m agentops_pipelines.serving --model-uri URI --version V --environment ENV ...``"""

from agentops_pipelines.serving.app import main

if __name__ == "__main__":  # the tracing process (multiprocessing "spawn") imports this module too
    raise SystemExit(main())
