"""``python -m agentops_pipelines.serving --model-uri URI --version V --environment ENV ...``"""

from agentops_pipelines.serving.server import main

if __name__ == "__main__":
    raise SystemExit(main())
