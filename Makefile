# s3mount developer tasks. Every target installs what it needs: on a fresh Debian 12 machine,
# `make test` is all it takes. Run `make help` for the list.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# fuse3 and the build's needs; then what the tests run on a mount: the programs of
# tests/test_programs.py, test_sparse.py and test_rewrite.py, and s3fs and rclone, whose
# metadata conventions tests/test_meta.py checks (make bench compares s3mount with them too).
APT_PACKAGES := fuse3 libfuse3-dev pkg-config rsync unzip zip systemd xz-utils zstd lz4 \
  p7zip-full git vim rdiff-backup gddrescue aria2 curl ffmpeg s3fs rclone
BENCH_APT_PACKAGES := s3fs rclone
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

PYTEST_ARGS ?=
BENCH_ARGS ?=
BIGDISK_ARGS ?=
RUFF_PATHS := s3mount tests bench
MYPY_PATHS ?= s3mount tests/seaweed.py tests/test_seaweed.py bench/demo_seed.py \
  tests/memstore.py tests/motoserver.py tests/test_store_contract.py tests/test_model.py

# make install: the package in its own venv, the command on PATH, the systemd template unit.
# Point them elsewhere to try it out: make install INSTALL_DIR=/tmp/t/opt PREFIX=/tmp/t/usr ...
INSTALL_DIR ?= /opt/s3mount
PREFIX ?= /usr/local
SYSTEMD_DIR ?= /etc/systemd/system
INSTALL_VENV ?= yes
SYSTEMD_RUNTIME_DIR ?= /run/systemd/system
SYSTEMCTL ?= systemctl

DEMO := .demo
DEMO_MNT := $(DEMO)/mnt
DEMO_BUCKET := demo-bucket
# Exports AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL.
DEMO_ENV = eval "$$($(BIN)/python -m tests.seaweed env --state-dir $(DEMO))"

export PYTHON_H_PRESENT := import os, sys, sysconfig; \
  sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))

.PHONY: help deps venv test lint demo demo-stop bench bench-bigdisk soak install clean

help:
	@echo "make test       install what is missing (apt, .venv), then run pytest"
	@echo "make lint       ruff check and mypy --strict"
	@echo "make demo       start SeaweedFS, seed $(DEMO_BUCKET), mount it at $(DEMO_MNT)"
	@echo "make demo-stop  unmount, stop the server, remove $(DEMO)"
	@echo "make bench      s3mount side by side with s3fs, rclone and boto3 (bench/run.py,"
	@echo "                ~17 min), then the tail of a big disk (bench/bigdisk.py, ~25 min);"
	@echo "                BENCH_ARGS=--quick to try it; apt-get installs"
	@echo "                $(BENCH_APT_PACKAGES) if missing"
	@echo "make bench-bigdisk  the tail of a big disk alone: parts up to 512 MiB and 4 GiB"
	@echo "                vs the 8 MiB stage (bench/bigdisk.py, --part-size 8M, SeaweedFS and moto)"
	@echo "make soak       writers and readers behind the fault proxy; docs/reliability.md"
	@echo "make deps       apt-get install $(APT_PACKAGES) if missing"
	@echo "make venv       create $(VENV) with the package and its test, lint and bench extras"
	@echo "make install    pip install . into $(INSTALL_DIR), link $(PREFIX)/bin/s3mount,"
	@echo "                put s3mount@.service in $(SYSTEMD_DIR) (see systemd/README.md)"
	@echo "make clean      demo-stop, then remove $(VENV) and caches"

# Building pyfuse3 (sdist only) needs libfuse3-dev, pkg-config, a C compiler and Python's headers.
deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg -s "$$pkg" 2>/dev/null | grep -q '^Status: install ok installed' \
	    || missing="$$missing $$pkg"; \
	done; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	$(PYTHON) -c "$$PYTHON_H_PRESENT" || missing="$$missing python3-dev"; \
	if [ -z "$$missing" ]; then \
	  echo "deps: all present"; \
	else \
	  echo "deps: installing$$missing"; \
	  $(SUDO) apt-get update -q; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off --disable-pip-version-check \
	  -e '.[test,lint,bench]'
	touch $@

venv: $(STAMP)

test: deps venv
	$(BIN)/pytest $(PYTEST_ARGS)

lint: deps venv
	$(BIN)/ruff check $(RUFF_PATHS)
	$(BIN)/mypy $(MYPY_PATHS)

bench-deps:
	@missing=""; \
	for pkg in $(BENCH_APT_PACKAGES); do \
	  dpkg -s "$$pkg" 2>/dev/null | grep -q '^Status: install ok installed' \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then \
	  echo "bench-deps: all present"; \
	else \
	  echo "bench-deps: installing$$missing"; \
	  $(SUDO) apt-get update -q; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	fi

# make bench: the side-by-side table (bench/run.py), then the tail of a big disk
# (bench/bigdisk.py), both written into docs/benchmarks.md. BENCH_ARGS="--quick" (or a subset of
# --systems) writes to /tmp instead and skips the big disk.
bench: deps bench-deps venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	@if [ -z "$(BENCH_ARGS)" ]; then \
	  $(BIN)/python bench/bigdisk.py --out docs/benchmarks.md $(BIGDISK_ARGS); fi

# The tail of a big disk alone (bench/bigdisk.py): parts up to 512 MiB (SeaweedFS and moto) and
# 4 GiB (SeaweedFS: an 8 GiB stream) vs the 8 MiB stage; BIGDISK_ARGS="--tops 512" for the short
# one; ~25 min in all.
bench-bigdisk: deps venv
	$(BIN)/python bench/bigdisk.py --out docs/benchmarks.md $(BIGDISK_ARGS)

SOAK_ARGS ?=
soak: deps venv
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

demo: deps venv
	@if [ -e $(DEMO) ]; then \
	  echo "demo: a previous demo is there, stopping it first"; \
	  $(MAKE) --no-print-directory demo-stop; \
	fi
	$(BIN)/python -m tests.seaweed start --state-dir $(DEMO)
	$(DEMO_ENV); $(BIN)/python bench/demo_seed.py --bucket $(DEMO_BUCKET)
	mkdir -p $(DEMO_MNT)
	@$(DEMO_ENV); set -x; \
	$(BIN)/s3mount $(DEMO_BUCKET) $(DEMO_MNT) --endpoint-url "$$AWS_ENDPOINT_URL" \
	  || { echo "demo: mount failed; the server is still up: make demo-stop" >&2; exit 1; }
	ls -l $(DEMO_MNT) $(DEMO_MNT)/docs $(DEMO_MNT)/data
	cat $(DEMO_MNT)/hello.txt
	dd if=/dev/urandom of=$(DEMO_MNT)/upload.bin bs=1M count=64
	ls -l $(DEMO_MNT)/upload.bin
	$(DEMO_ENV); $(BIN)/python bench/demo_seed.py --bucket $(DEMO_BUCKET) --list
	@$(DEMO_ENV); \
	echo; \
	echo "Bucket $(DEMO_BUCKET) on $$AWS_ENDPOINT_URL is mounted at $(DEMO_MNT)."; \
	echo "  Try:  ls -lR $(DEMO_MNT);  cp SOMEFILE $(DEMO_MNT)/;  cat $(DEMO_MNT)/docs/readme.md"; \
	echo "  S3 keys for other tools:  eval \"\$$($(BIN)/python -m tests.seaweed env --state-dir $(DEMO))\""; \
	echo "  Stop it all:  make demo-stop"

# The venv is created where it will run (a venv cannot be moved), so there is no DESTDIR:
# INSTALL_DIR, PREFIX and SYSTEMD_DIR say where each part goes. INSTALL_VENV=no skips the
# venv (to refresh only the link and the unit). The unit's ExecStart follows PREFIX.
install: $(if $(filter yes,$(INSTALL_VENV)),deps)
	@if [ "$(INSTALL_VENV)" = yes ]; then \
	  set -x; \
	  $(PYTHON) -m venv $(INSTALL_DIR); \
	  $(INSTALL_DIR)/bin/python -m pip install --progress-bar off --disable-pip-version-check \
	    --upgrade .; \
	fi
	install -d $(PREFIX)/bin $(SYSTEMD_DIR)
	ln -sfn $(INSTALL_DIR)/bin/s3mount $(PREFIX)/bin/s3mount
	sed 's|/usr/local/bin/s3mount|$(PREFIX)/bin/s3mount|g' systemd/s3mount@.service \
	  > $(SYSTEMD_DIR)/.s3mount@.service.tmp
	chmod 644 $(SYSTEMD_DIR)/.s3mount@.service.tmp
	mv -f $(SYSTEMD_DIR)/.s3mount@.service.tmp $(SYSTEMD_DIR)/s3mount@.service
	@if [ -d $(SYSTEMD_RUNTIME_DIR) ]; then \
	  echo "$(SYSTEMCTL) daemon-reload"; $(SYSTEMCTL) daemon-reload; \
	else \
	  echo "install: systemd is not running here, no daemon-reload"; \
	fi
	@echo "install: next: /etc/s3mount/mnt-s3.env (systemd/example.env), then"
	@echo "  systemctl enable --now s3mount@mnt-s3.service    # mounts at /mnt/s3"

# Unmount first (a busy mount is detached lazily) so that rm never walks into the bucket.
demo-stop:
	@fusermount3 -u $(DEMO_MNT) 2>/dev/null || fusermount3 -uz $(DEMO_MNT) 2>/dev/null || true
	@if [ -f $(DEMO)/server.json ]; then \
	  $(BIN)/python -m tests.seaweed stop --state-dir $(DEMO); \
	fi
	rm -rf --one-file-system $(DEMO)

clean:
	@if [ -e $(DEMO) ]; then $(MAKE) --no-print-directory demo-stop; fi
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
