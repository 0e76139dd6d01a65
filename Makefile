# edgeseg developer entry points. `make demo` and `make test` work on a fresh machine: they create
# .venv, install torch 2.14.1 + torchvision 0.29.1 first, then edgeseg (editable) with every extra but
# tensorrt ('.[all]': build toolchain, sam3, coreml, transformers, plots, dev). A device that only
# runs bundles needs `pip install edgeseg` alone (README "Install profiles").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeseg-installed

.PHONY: setup demo test lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

# The main job (random weights): tokenize and encode the shipped sample prompts with the SAM3
# teacher and every student and print a comparison table; then export MobileCLIP-S0 and the
# teacher to ONNX, quantize S0 to INT8 (static Q/DQ and dynamic, calibrated and fidelity-gated)
# and print a size / latency / memory / fidelity table (the int8-quick suite of edgeseg bench); a short
# distillation; the headline use: the Jetson kit of S0 INT8 (ONNX Runtime self-check + summary;
# the engine itself is built on the device by the kit's build_engine.py); and that bundle as SAM3's text
# encoder on the shipped photo ("a cat", Meta's SAM3 image model, random weights: --top-k 3 draws the best
# queries anyway), ending with the overlay picture's path.
DEMO_PROMPTS := edgeseg/data/prompts/samples.txt
demo: $(STAMP)
	$(BIN)/edgeseg compare --prompts $(DEMO_PROMPTS)
	$(BIN)/python benchmarks/run_suite.py int8-quick --allow-dirty --work out/int8-work --out out/int8-report
	@sed -n '/^## Summary/,/^## Bars/p' out/int8-report/report.md
	$(BIN)/edgeseg distill --student mobileclip-s0 --limit 128 --eval-limit 48 --steps 16 --batch-size 16 \
		--warmup-steps 2 --eval-every 8 --checkpoint-every 8 --out out/distill-demo
	$(BIN)/edgeseg build --target jetson --encoder mobileclip-s0 --precision int8 --max-batch 8 \
		--calibration-limit 512 --eval-limit 500 --out out/s0-jetson
	$(BIN)/edgeseg segment --bundle out/s0-jetson --top-k 3 --out out/segment-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ---- C++ runtime (engines/, issue 7) ----------------------------------------------------------------------
# `make cpp`: Debian packages if missing (apt-get when root), ONNX Runtime's official C/C++ headers from
# the npm package com.github.asus4.onnxruntime (the PyPI wheel has the library but no headers) into
# build/third_party, then configure + build build/cpp and run ctest (except the "python" label: pytest runs
# tests/test_engines.py right after in `make test`). `make cpp-asan`: the same tests
# built with ASan + UBSan (EDGESEG_SANITIZE=ON) in build/cpp-asan. `make cpp-noort`: the library without
# ONNX Runtime (-DEDGESEG_WITH_ONNXRUNTIME=OFF: tokenizer + prompt banks, what an iOS app beside a Core ML
# package links) and the tests that need no model, in build/cpp-noort. `make test` runs all three before
# pytest (tests/test_engines.py checks C++ vs Python parity on the build/cpp build).
.PHONY: cpp cpp-asan cpp-noort cpp-deps ort-headers
CPP_DEBS := libutf8proc-dev nlohmann-json3-dev libgtest-dev zlib1g-dev cmake
ORT_NPM_VERSION ?= 0.4.9
ORT_DIR := build/third_party/onnxruntime
ORT_HEADERS := $(ORT_DIR)/include/onnxruntime_c_api.h
CMAKE_GEN := $(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja")
CPP_JOBS ?= 2

cpp-deps:
	@if ! dpkg -s $(CPP_DEBS) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CPP_DEBS) ninja-build; \
	  else echo "C++ runtime: install the build dependencies first: sudo apt-get install $(CPP_DEBS) ninja-build" >&2; fi; \
	fi

$(ORT_HEADERS):
	rm -rf build/third_party/npm && mkdir -p build/third_party/npm $(ORT_DIR)/include
	cd build/third_party/npm && npm pack --silent com.github.asus4.onnxruntime@$(ORT_NPM_VERSION) >/dev/null
	tar -xzf build/third_party/npm/com.github.asus4.onnxruntime-$(ORT_NPM_VERSION).tgz -C build/third_party/npm \
		--wildcards '*/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/*.h'
	cp build/third_party/npm/package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/*.h \
		$(ORT_DIR)/include/
	rm -rf build/third_party/npm

ort-headers: $(ORT_HEADERS)

cpp: $(STAMP) cpp-deps $(ORT_HEADERS)
	cmake -S . -B build/cpp $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cpp -j$(CPP_JOBS)
	ctest --test-dir build/cpp -j$(CPP_JOBS) --output-on-failure -LE python

cpp-asan: $(STAMP) cpp-deps $(ORT_HEADERS)
	cmake -S . -B build/cpp-asan $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DEDGESEG_SANITIZE=ON
	cmake --build build/cpp-asan -j$(CPP_JOBS)
	ctest --test-dir build/cpp-asan -j$(CPP_JOBS) --output-on-failure

cpp-noort: $(STAMP) cpp-deps
	cmake -S . -B build/cpp-noort $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release -DEDGESEG_WITH_ONNXRUNTIME=OFF \
		-DEDGESEG_WITH_TENSORRT=OFF
	cmake --build build/cpp-noort -j$(CPP_JOBS) --target edgeseg_unit_tests edgeseg-encode
	ctest --test-dir build/cpp-noort -j$(CPP_JOBS) --output-on-failure -LE python

test: cpp cpp-asan cpp-noort

lint: $(STAMP)
	$(BIN)/ruff check edgeseg tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
