# kexechibd — set-up, checks, demo.  `make check` and `make demo` install what
# they need on a fresh Debian 12 machine (as root) and are quick when nothing changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Debian packages the project needs: build tools for systemd-python and the
# purgatory, the real D-Bus/polkit/systemd tools the tests start, and the
# field's tools the tests and benchmarks compare against.
APT_PACKAGES := gcc make pkg-config libsystemd-dev python3-dev python3-venv \
	dbus dbus-bin dbus-daemon libglib2.0-bin polkitd systemd util-linux \
	binutils cpio zstd lz4
# The kernel lab (docs/lab.md): QEMU, and the libraries Debian's kexec binary
# links (kexec-tools itself is unpacked into the lab cache, not installed: its
# package would make this machine's own reboots go through kexec).
# kernel/build.sh installs the kernel build dependencies itself.
APT_PACKAGES += qemu-system-x86 libxenmisc4.17

.PHONY: all setup check test lint typecheck demo bench purgatory install clean lab-kernel

all: check

# ---------------------------------------------------------------- set-up
$(VENV)/.apt-stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: $(VENV)/.apt-stamp setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(VENV)/.installed purgatory

purgatory: $(VENV)/.apt-stamp
	@$(MAKE) -s -C purgatory

# ---------------------------------------------------------------- kernel lab
# Builds (or finds in /var/cache/kexechib-kernel) the lab kernel: Debian's
# linux-source-6.1 + kernel/patches, tinyconfig + kernel/lab.config.
lab-kernel:
	kernel/build.sh

# ---------------------------------------------------------------- checks
check: setup
	$(BIN)/ruff check .
	$(BIN)/mypy kexechibd
	$(BIN)/pytest -q

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy kexechibd

# ---------------------------------------------------------------- demo, bench
demo: setup
	$(BIN)/python -m kexechibd.demo

bench: setup
	$(BIN)/python -m bench

# ---------------------------------------------------------------- install
DESTDIR ?=
PREFIX ?= /usr

install:
	@echo "install: see the D-Bus/systemd issue"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	@$(MAKE) -s -C purgatory clean
