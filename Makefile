# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if needed, then run the end-to-end demo on the embedded data
#   make test   - create .venv if needed, then run the default test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
EXTRAS  ?= all
OUT     ?= runs/demo

.PHONY: demo test test-slow install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sciinterp run experiment=demo out=$(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs outputs multirun .pytest_cache
