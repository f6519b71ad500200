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
DEMO    ?= protein_demo weather_demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow install clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# Both domains, one experiment each: runs/demo/protein_demo, runs/demo/weather_demo
demo: $(STAMP)
	for e in $(DEMO); do $(VENV)/bin/sciinterp run experiment=$$e out=$(OUT)/$$e || exit 1; done

# The report test renders in Debian's headless Chromium; install it when we are root with apt
# (CI, fresh machines), otherwise that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the headless-browser report test will be skipped"

# pytest exits 5 when no test is collected: not a failure
test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

clean:
	rm -rf runs outputs multirun .pytest_cache
