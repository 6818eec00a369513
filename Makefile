# Every target sets up what it needs: a virtualenv in $(VENV), the pinned torch and
# dependencies, and the compiled extension (`pip install -e .`, CMake underneath).
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: setup build test test-transformers-newest check-cuda check-cuda-build demo bench clean

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
	$(PY) -m pytest -q --durations=15 python_tests
	$(MAKE) --no-print-directory test-transformers-newest
	PYTHON=$(PY) bash .ci/check_cuda.sh

# The pins above hold transformers at 5.17.0 (the GPU machine's); pyproject allows up to <6, and
# transformers renamed and reworked APIs this package uses since (the KV-cache argument, Trainer's
# special-token alignment and resume metrics). The tests that drive transformers also run against
# the newest release checked, in a second virtualenv that reuses the extension built in place;
# with the newest accelerate checked too (Trainer's distributed and mixed-precision layer).
TRANSFORMERS_NEWEST ?= 5.25.0
ACCELERATE_NEWEST ?= 1.16.0
NEWEST_VENV ?= .venv-transformers-newest
NEWEST_PY := $(NEWEST_VENV)/bin/python
NEWEST_STAMP := $(NEWEST_VENV)/.deps-installed-$(TRANSFORMERS_NEWEST)-$(ACCELERATE_NEWEST)
TRANSFORMERS_TESTS := test_modeling.py test_modeling_checkpoint.py test_modeling_backbones.py test_layers.py test_attention.py \
	test_generate.py test_generate_io.py test_generate_limits.py test_generate_edge_cases.py \
	test_generate_cli.py test_generate_seeds.py test_mtp_next_token.py test_training_matches_decoding.py \
	test_eval_cli.py test_eval_sampling.py test_eval_compile.py test_evaluation.py test_eval_resume.py test_eval_distributed.py test_eval_meetings.py \
	test_data_jsonl.py test_data_parquet.py test_data_messages.py test_data_shards.py \
	test_train.py test_train_lora.py test_train_inputs.py test_train_rows.py \
	test_train_resume.py test_train_resume_checks.py test_train_resume_auto.py test_train_preemption.py \
	test_train_precision.py test_train_parallel.py test_train_ranks.py test_train_fsdp.py test_train_checkpoints.py test_train_eval.py \
	test_export.py test_file_writes.py test_docs_python.py test_progress.py test_train_progress.py test_untrusted_files.py \
	test_hub_cache.py test_hub_cache_layouts.py

$(NEWEST_STAMP): requirements-ci.txt
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_PY) -m pip install -q --upgrade pip
	$(NEWEST_PY) -m pip install -q torch==$(TORCH_VERSION)
	$(NEWEST_PY) -m pip install -q -r requirements-ci.txt
	$(NEWEST_PY) -m pip install -q transformers==$(TRANSFORMERS_NEWEST) accelerate==$(ACCELERATE_NEWEST)
	touch $@

# FutureWarnings are errors there: they announce the next removal this package would trip on.
test-transformers-newest: build $(NEWEST_STAMP)
	$(NEWEST_PY) -c "import pathlib, accelerate, transformers, superthoughts_ext as s; \
		assert transformers.__version__ == '$(TRANSFORMERS_NEWEST)', transformers.__version__; \
		assert accelerate.__version__ == '$(ACCELERATE_NEWEST)', accelerate.__version__; \
		assert pathlib.Path(s.__file__).parent == pathlib.Path('superthoughts_ext').resolve(), s.__file__"
	$(NEWEST_PY) -m pytest -q -p no:cacheprovider -W error::FutureWarning $(addprefix python_tests/,$(TRANSFORMERS_TESTS))

check-cuda: build
	PYTHON=$(PY) bash .ci/check_cuda.sh

# A whole CUDA build (configure, link, import) against a CUDA torch in its own venv of several GB;
# by hand, not in `make test` (see the script).
check-cuda-build:
	PYTHON=$(PYTHON) bash .ci/check_cuda_build.sh

demo: build
	$(VENV)/bin/superthoughts demo --json demo_output/demo.json --plot demo_output/demo.png

bench: build
	$(VENV)/bin/superthoughts bench step --output bench_output/step.json

clean:
	rm -rf build superthoughts_ext/_C*.so superthoughts_ext.egg-info
