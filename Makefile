# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if needed, then run the end-to-end demo on the embedded data
#   make test   - create .venv if needed, then run the default test suite (CI runs exactly this)
# The install is idempotent: it reruns only when .venv is missing or pyproject.toml changed
# (stamp file $(VENV)/.installed).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
EXTRAS  ?= all
OUT     ?= runs/demo
DEMO    ?= demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sciinterp run experiment=$(DEMO) out=$(OUT)

# pytest exits 5 when no test is collected: not a failure
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean:
	rm -rf runs outputs multirun .pytest_cache
