"""agentops-pipelines: the lifecycle of a production AI agent on Dagster."""
