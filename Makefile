# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs VLP from this folder, with
# every dependency at the version of requirements/lock.txt (the tested versions; `make lock` regenerates it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LOCK   := requirements/lock.txt
# The torch of the lock, installed first: on machines with the CPU wheel on disk (pip's find-links) pip takes it.
TORCH_PIN := $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' $(LOCK))
STAMP  := $(VENV)/.installed
# `make lock`: pip-tools in its own environment, so the tool's own dependencies stay out of .venv.
PIP_TOOLS := pip-tools==7.7.0
TOOLS  := .venv-lock
# `make test-latest`: a second environment with the newest versions setup.py allows (torch held at the lock's).
LATEST := .venv-latest
LATEST_TESTS ?= tests
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo pretrain-demo lint format test test-all test-latest lock bench clean

$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

install: $(STAMP)

# The quick study on the embedded synthetic world: report.md, plots and results.json in runs/quick.
demo: $(STAMP)
	$(VENV)/bin/vlp study quick --output_dir runs/quick --jobs 2

# One longer pretraining run (MLM + ITM, the figures of the README's Measured section) in runs/demo.
pretrain-demo: $(STAMP)
	$(VENV)/bin/vlp pretrain --config training/configs/demo.yaml --output_dir runs/demo

# ruff (pyproject.toml's rules) and its formatter, checked; `make format` applies both.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests --runslow

# The suite against the newest allowed versions; on a failure it names the package and version that broke it.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	echo "$(TORCH_PIN)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q $(TORCH_PIN)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-constraint.txt \
		-e ".[test,captioning]"
	$(LATEST)/bin/python tests/latest_versions.py --lock $(LOCK) -- -q $(LATEST_TESTS)

# Regenerate the lock with the newest versions setup.py allows; then run `make test` and commit both. A local build
# label (torch's +cpu) names one wheel file, so it is cut: the lock pins the release.
lock:
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile -q --upgrade --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra test --extra captioning --extra lint -o $(LOCK) setup.py requirements/lock.in
	sed -i 's/^\(torch==[^+ ]*\)+[a-z0-9.]*/\1/' $(LOCK)

bench: $(STAMP)
	@set -e; for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) *.egg-info runs .pytest_cache
