# Two commands on a fresh machine:  `make demo` (the whole pipeline on an embedded
# procedural dataset) and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick bench-gpu clean

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

# Every benchmark, one after the other (each under an exclusive lock of BENCH_LOCK, so a
# shared machine's other work never runs beside one); writes benchmarks/README.md.
BENCH_LOCK ?= /tmp/r2-cpu.lock
bench: $(STAMP)
	$(BIN)/python benchmarks/collect.py --lock $(BENCH_LOCK)

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/collect.py --quick --lock $(BENCH_LOCK)

# GPU figures (extraction, training per preload, inference) into benchmarks/GPU.md; on a
# machine without CUDA it says so and exits 0.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/collect.py --only gpu.py --out benchmarks/GPU.md

clean:
	rm -rf $(VENV) demo_out
