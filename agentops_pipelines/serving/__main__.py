"""``python -m agentops_pipelines.serving --model-uri URI --version V --environment ENV ...``"""

from agentops_pipelines.serving.app import main

raise SystemExit(main())
