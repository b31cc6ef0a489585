# Set-up and everyday commands. `make serve` and `make test` each install what they need first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP := $(PYTHON) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
# torch is pinned in pyproject.toml; the constraint file keeps every install on the same versions.
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: install install-dev install-system serve test lint typecheck bench-backends bench-quality evaluate

install:  ## the package and its runtime dependencies (pip lists what it installs: the first time takes minutes)
	@echo "installing imdn-sr and its dependencies (PyTorch, ONNX Runtime: a few minutes the first time)..."
	$(PIP) install --disable-pip-version-check -c constraints.txt -e . | { grep -v '^Requirement already satisfied' || true; }

install-dev: install  ## + test, lint and deployment-check tools
	$(PIP_INSTALL) -e '.[dev]' -r requirements-deploy.txt

install-system:  ## Debian packages the integration tests drive: Prometheus, Chromium
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $$(grep -v '^#' .ci/apt-packages.txt); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	else echo "not root or no apt-get: tests needing Prometheus/Chromium will skip"; fi

serve: install  ## start the service with the project's own default weights
	$(PYTHON) -m service --host $(HOST) --port $(PORT)

test: install-dev install-system  ## lint, type-check and run the whole test suite
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy model service sr_client bench
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy model service sr_client bench

evaluate:  ## PSNR/SSIM of the default weights on ../shared benchmarks
	$(PYTHON) -m model.evaluate --weights default --data ../shared/data/benchmarks --scale 2 3 4
