# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs VLP from this folder.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo pretrain-demo test test-all bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN) $$( [ -d /opt/wheels ] && echo --find-links /opt/wheels )
	$(PIP) install -q -e ".[test,captioning]"
	touch $(STAMP)

install: $(STAMP)

# The quick study on the embedded synthetic world: report.md, plots and results.json in runs/quick.
demo: $(STAMP)
	$(VENV)/bin/vlp study quick --output_dir runs/quick

# One longer pretraining run (MLM + ITM, the figures of the README's Measured section) in runs/demo.
pretrain-demo: $(STAMP)
	$(VENV)/bin/vlp pretrain --config training/configs/demo.yaml --output_dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests --runslow

bench: $(STAMP)
	@set -e; for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) *.egg-info runs .pytest_cache
