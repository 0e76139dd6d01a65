# edgeseg developer entry points. `make demo` and `make test` work on a fresh machine: they create
# .venv, install torch 2.14.1 + torchvision 0.29.1 first, then edgeseg with its [sam3,coreml,dev] extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeseg-installed

.PHONY: setup demo test lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[sam3,coreml,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job (random weights): tokenize and encode the shipped sample prompts with the SAM3
# teacher and every student and print a comparison table; then export MobileCLIP-S0 and the
# teacher to ONNX, quantize S0 to INT8 (static Q/DQ and dynamic, calibrated and fidelity-gated)
# and print a size / latency / memory / fidelity table (benchmarks/int8_bench.py --quick).
demo: $(STAMP)
	$(BIN)/edgeseg compare --prompts calibration/samples.txt
	$(BIN)/python benchmarks/int8_bench.py --quick --skip-teacher-int8 --skip-all-int8 \
		--work out/int8-work --out out/int8-report

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check edgeseg tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
