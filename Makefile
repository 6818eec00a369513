# Every target sets up what it needs: a virtualenv in $(VENV), the pinned torch and
# dependencies, and the compiled extension (rebuilt incrementally by CMake).
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: setup build test check-cuda demo bench clean

$(STAMP): requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements-ci.txt
	touch $@

setup: $(STAMP)

build: setup
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q python_tests
	bash .ci/check_cuda.sh

check-cuda:
	bash .ci/check_cuda.sh

demo: build
	$(VENV)/bin/superthoughts demo --json demo_output/demo.json --plot demo_output/demo.png

bench: build
	$(VENV)/bin/superthoughts bench step

clean:
	rm -rf build superthoughts_ext/_C*.so superthoughts_ext.egg-info
