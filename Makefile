# Two commands on a fresh machine:  `make demo` (the whole pipeline on an embedded
# procedural dataset) and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch pinned: any other torch requirement may pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/r2 demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/eval.py
	$(BIN)/python benchmarks/anno_limits.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/extract.py --memory
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/clip_precision.py --skip-predictions
	$(BIN)/python benchmarks/long_video.py model
	$(BIN)/python benchmarks/long_video.py extract
	$(BIN)/python benchmarks/import_release.py

clean:
	rm -rf $(VENV) demo_out
