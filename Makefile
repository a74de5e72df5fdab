# Two commands: `make demo` and `make test`. Both install into .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reverie-installed
NPM_DATA := data/npm
NPM_STAMP := $(NPM_DATA)/node_modules/.reverie-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

PROMPT ?= red apple, Noto emoji
DEMO_MODEL ?= mini

.PHONY: install demo test clean data browser servers

# Debian's chromium for the studio's browser tests (Playwright drives it; no browser download).
BROWSER := /usr/bin/chromium

install: $(STAMP) $(NPM_STAMP)

# torch and torchvision first, pinned together (open_clip needs torchvision, which fits no
# other torch here); everything else is then resolved against them.
$(STAMP): requirements.txt requirements-dev.txt requirements-speed.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-speed.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The openly licensed art the built-in models learn from (npm packages, pinned by the lock file).
$(NPM_STAMP): $(NPM_DATA)/package.json $(NPM_DATA)/package-lock.json
	npm ci --prefix $(NPM_DATA) --no-audit --no-fund --silent
	touch $(NPM_STAMP)

data: $(STAMP) $(NPM_STAMP)
	$(BIN)/reverie data build --npm $(NPM_DATA)/node_modules --out data/build/mini-64 --size 64

demo: $(STAMP)
	@echo "reverie demo: four pictures from the built-in model '$(DEMO_MODEL)' (emoji and icons), into outputs/demo"
	$(BIN)/reverie generate "$(PROMPT)" --model $(DEMO_MODEL) -n 4 --seed 1 --outdir outputs/demo

$(BROWSER):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else echo "chromium is missing: run 'sudo apt-get install chromium' (browser tests are skipped without it)"; fi

browser: $(BROWSER)

# Debian's PostgreSQL and Redis for the tests that run the gallery on PostgreSQL and jobs on
# Redis (each test starts its own server in a temp folder; they are skipped without these).
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
SERVERS_MISSING := $(if $(PG_CTL),,postgresql) $(if $(wildcard /usr/bin/redis-server),,redis-server)

servers:
	@if [ -z "$(strip $(SERVERS_MISSING))" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SERVERS_MISSING); \
	else echo "$(strip $(SERVERS_MISSING)) missing: run 'sudo apt-get install $(strip $(SERVERS_MISSING))' (their tests are skipped without them)"; fi

test: $(STAMP) $(NPM_STAMP) browser servers
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV) outputs .pytest_cache
