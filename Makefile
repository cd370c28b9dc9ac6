# kexechibd — set-up, checks, demo.  `make check` and `make demo` install what
# they need on a fresh Debian 12 machine (as root) and are quick when nothing changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Debian packages the project needs.  What the package itself needs comes
# from debian/control, not from a second list here: its Depends (the tests
# run the product on Debian's python3 and the real dbus, polkitd, systemd and
# initramfs-tools) are added below, and its Build-Depends (gcc and binutils
# build the purgatory) are installed by `apt-get build-dep`.
# Besides: build tools for systemd-python in the venv, the real D-Bus tools
# the tests start, and the field's tools the tests and benchmarks compare
# against.
# libxml2-utils: xmllint validates the polkit policy against polkit's DTD.
# makedumpfile, time: `make bench` (GNU time measures the tools' peak RSS);
# makedumpfile only recommends kexec-tools, which --no-install-recommends
# keeps out (see the lab's note below).
APT_PACKAGES := libsystemd-dev python3-dev python3-venv \
	dbus-bin dbus-daemon libglib2.0-bin util-linux \
	cpio zstd lz4 makedumpfile time btrfs-progs libxml2-utils
# debian/control's field $(1): package names without comments, substitution
# variables, version constraints or architecture qualifiers ("\043" is '#';
# make would read a literal one as a comment, and count a literal parenthesis).
lparen := (
control_field = $(shell awk -v field='$(1):' \
	'substr($$0, 1, 1) == "\043" { next } \
	/^[^ \t]/ { f = index($$0, field) == 1; sub(/^[^:]*:/, "") } f { print }' debian/control \
	| tr ',' '\n' | sed -e 's/^[ \t]*//' -e 's/[ $(lparen):].*//' | grep -v -e '^$$' -e '^\$$')
APT_PACKAGES += $(call control_field,Depends)
# The kernel lab (docs/lab.md): QEMU, and the libraries Debian's kexec binary
# links (kexec-tools itself is unpacked into the lab cache, not installed: its
# package would make this machine's own reboots go through kexec).
# kernel/build.sh installs the kernel build dependencies itself.
# The guests' userspace (kexechibd/lab/userspace.py) is Debian's python3 with
# the daemon's dependencies as Debian packages; e2fsprogs makes their image disk.
APT_PACKAGES += qemu-system-x86 libxenmisc4.17 \
	python3-cffi-backend python3-pycparser python3-ply e2fsprogs
# The Debian package (`make deb`, which `make check` builds and lints):
# dpkg-buildpackage and dpkg-checkbuilddeps, lintian (debhelper and dh-python
# are Build-Depends); man-db and groff-base render the man pages (`man -l`).
# tests/test_initramfs_hook.py runs the real mkinitramfs (initramfs-tools is
# a Depends) with our hook, in a private mount namespace.
APT_PACKAGES += dpkg-dev lintian man-db groff-base
# The lab's Debian guest (kexechibd/lab/debian.py): mmdebstrap builds its root
# filesystem from the archive apt uses; ovmf is the UEFI firmware it boots with.
APT_PACKAGES += mmdebstrap ovmf
# kernel/build.sh compiles through ccache when it is installed: a change to
# one kernel patch then rebuilds in minutes instead of half an hour.
APT_PACKAGES += ccache
# Sealed image files on LUKS2 (docs/lab.md §12): the lab guests run the
# host's cryptsetup and dmsetup over 9p (cryptsetup-bin only: the cryptsetup
# package would add the host's own crypttab handling and initramfs hooks).
APT_PACKAGES += cryptsetup-bin dmsetup
# The Debian guest with its root on LUKS2 (docs/lab.md §13) has a partitioned
# disk: sfdisk writes its GPT.
APT_PACKAGES += fdisk

.PHONY: all setup check test lint typecheck demo demo-luks demo-lab demo-model bench bench-lab purgatory purgatory-object \
	install deb clean lab-kernel

all: check

# ---------------------------------------------------------------- set-up
$(VENV)/.apt-stamp: Makefile debian/control
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@dpkg-checkbuilddeps 2>/dev/null || { \
		echo "apt: installing debian/control's Build-Depends"; \
		DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q --no-install-recommends ./; }
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: $(VENV)/.apt-stamp setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(VENV)/.installed purgatory

purgatory: $(VENV)/.apt-stamp
	@$(MAKE) -s -C purgatory

# Only the object `make install` ships, without the apt step: install runs in
# packaging builds, unprivileged and with the build tools already there.
purgatory-object:
	@$(MAKE) -s -C purgatory purgatory.ro

# ---------------------------------------------------------------- kernel lab
# Builds (or finds in /var/cache/kexechib-kernel) the lab kernel: Debian's
# linux-source-6.12 + kernel/patches, tinyconfig + kernel/lab.config.
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
# The main job: a real Debian 12 guest (systemd, logind, ext4 root, OVMF,
# 2 CPUs) with the checkout's package installed hibernates through logind and
# resumes at its next boot (docs/lab.md §11; a few minutes; the first run
# also builds the lab kernel and the Debian root filesystem).  demo-lab: the
# same cycle in the lab's hand-made RAM guest (about a minute).  demo-model:
# on the machine model, without QEMU or a kernel build.
demo: setup lab-kernel
	$(BIN)/python -m kexechibd.demo --debian

demo-luks: setup lab-kernel
	$(BIN)/python -m kexechibd.demo --debian --luks

demo-lab: setup lab-kernel
	$(BIN)/python -m kexechibd.demo

demo-model: setup
	$(BIN)/python -m kexechibd.demo --model

bench: setup
	$(BIN)/python -m bench

# kexechibd against the kernel's own hibernation on the Debian guest, and B's
# save against zstd in the same B (issue 15; about 25 minutes of QEMU TCG).
bench-lab: setup lab-kernel
	$(BIN)/python -m bench.swsusp
	$(BIN)/python -m bench.b_save

# ---------------------------------------------------------------- install
# Where Debian expects each file.  The Python package goes where Debian's
# python3 finds it; its dependencies are Debian packages (debian/control's
# Depends).  DESTDIR is respected; /etc/kexechibd.conf is only created
# when absent, so an administrator's file survives reinstalls.
DESTDIR ?=
PREFIX ?= /usr
SYSCONFDIR ?= /etc
PYTHONDIR ?= $(PREFIX)/lib/python3/dist-packages
# systemd's and D-Bus's own directories come from their pkg-config files where
# installed (Debian 12's systemd.pc says /lib/systemd/system; dbus-1.pc comes
# with libdbus-1-dev and names no policy directory), else the usual places.
# Evaluated once, and only when not given on the command line.
PKG_CONFIG ?= pkg-config
pkg_variable = $(or $(shell $(PKG_CONFIG) --variable=$(1) $(2) 2>/dev/null),$(3))
DBUSDIR ?= $(PREFIX)/share/dbus-1
ifndef UNITDIR
UNITDIR := $(call pkg_variable,systemdsystemunitdir,systemd,$(PREFIX)/lib/systemd/system)
endif
ifndef DBUS_SERVICEDIR
DBUS_SERVICEDIR := $(call pkg_variable,system_bus_services_dir,dbus-1,$(DBUSDIR)/system-services)
endif
ifndef DBUS_INTERFACEDIR
DBUS_INTERFACEDIR := $(call pkg_variable,interfaces_dir,dbus-1,$(DBUSDIR)/interfaces)
endif
DBUS_POLICYDIR ?= $(DBUSDIR)/system.d
POLKITDIR ?= $(PREFIX)/share/polkit-1/actions
DOCDIR ?= $(PREFIX)/share/doc/kexechibd
INITRAMFSTOOLSDIR ?= $(PREFIX)/share/initramfs-tools
# The daemon looks for the purgatory in /usr/lib/kexechibd (INSTALLED_PURGATORY
# in kexechibd/purgatory.py), as the units run /usr/sbin/kexechibd: with
# another PREFIX, point KEXECHIB_PURGATORY at it.
PKGLIBDIR ?= $(PREFIX)/lib/kexechibd
# logind's sleep.conf drop-in and the tmpfiles.d entry for its runtime twin
# (DESIGN §6); systemd reads /usr/lib/systemd/sleep.conf.d on every layout.
SLEEPCONFDIR ?= $(PREFIX)/lib/systemd/sleep.conf.d
ifndef TMPFILESDIR
TMPFILESDIR := $(call pkg_variable,tmpfilesdir,systemd,$(PREFIX)/lib/tmpfiles.d)
endif
# Drop-ins: systemd/<unit>.d/kexechib.conf extends <unit> of systemd.
DROPINS := systemd-hibernate.service systemd-logind.service systemd-hybrid-sleep.service \
	systemd-suspend-then-hibernate.service
UNITS := kexechibd.service kexechib-save.target kexechib-save.service kexechib-resume.service
MANDIR ?= $(PREFIX)/share/man
INSTALL ?= install
# What serves only the tests, the demo and the benchmarks is not part of the
# installed product (setup.cfg and setup.py leave the same out of a wheel;
# tests/test_packaging.py checks both).  The product imports none of it: the
# one reference, `[daemon] backend = model`, fails with a message saying so.
DEV_ONLY := kexechibd/lab kexechibd/model kexechibd/demo.py kexechibd/privatebus.py
MAN5 := $(wildcard docs/man/*.5)
MAN8 := $(wildcard docs/man/*.8)

install: purgatory-object
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PYTHONDIR) \
		$(DESTDIR)$(PKGLIBDIR) \
		$(addprefix $(DESTDIR)$(UNITDIR)/,$(addsuffix .d,$(DROPINS))) \
		$(DESTDIR)$(SLEEPCONFDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DBUS_POLICYDIR) \
		$(DESTDIR)$(DBUS_SERVICEDIR) $(DESTDIR)$(DBUS_INTERFACEDIR) \
		$(DESTDIR)$(POLKITDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR) \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	find kexechibd \( -name '*.py' -o -name py.typed \) \
		$(foreach p,$(DEV_ONLY),-not -path '$(p)' -not -path '$(p)/*') | sort | while read -r f; do \
		$(INSTALL) -D -m 0644 "$$f" "$(DESTDIR)$(PYTHONDIR)/$$f"; done
	printf '#!/usr/bin/python3\nimport sys\n\nfrom kexechibd.daemon.main import main\n\nsys.exit(main())\n' \
		> $(DESTDIR)$(PREFIX)/sbin/kexechibd
	printf '#!/usr/bin/python3\nimport sys\n\nfrom kexechibd.ctl.main import main\n\nsys.exit(main())\n' \
		> $(DESTDIR)$(PREFIX)/bin/kexechibctl
	chmod 0755 $(DESTDIR)$(PREFIX)/sbin/kexechibd $(DESTDIR)$(PREFIX)/bin/kexechibctl
	$(INSTALL) -m 0644 purgatory/purgatory.ro $(DESTDIR)$(PKGLIBDIR)/
	$(INSTALL) -m 0644 $(addprefix systemd/,$(UNITS)) $(DESTDIR)$(UNITDIR)/
	for d in $(DROPINS); do \
		$(INSTALL) -m 0644 systemd/$$d.d/kexechib.conf $(DESTDIR)$(UNITDIR)/$$d.d/ || exit 1; done
	$(INSTALL) -m 0644 systemd/sleep.conf.d/10-kexechib.conf $(DESTDIR)$(SLEEPCONFDIR)/
	$(INSTALL) -m 0644 systemd/tmpfiles.d/kexechib.conf $(DESTDIR)$(TMPFILESDIR)/
	$(INSTALL) -m 0644 dbus/org.kexechib1.conf $(DESTDIR)$(DBUS_POLICYDIR)/
	$(INSTALL) -m 0644 dbus/org.kexechib1.service $(DESTDIR)$(DBUS_SERVICEDIR)/
	$(INSTALL) -m 0644 dbus/org.kexechib1.xml $(DESTDIR)$(DBUS_INTERFACEDIR)/
	$(INSTALL) -m 0644 dbus/org.kexechib1.policy $(DESTDIR)$(POLKITDIR)/
	$(INSTALL) -m 0644 systemd/kexechibd.conf.example docs/DESIGN.md docs/background.md README.md \
		$(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 0644 $(MAN8) $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -D -m 0755 systemd/kernel/postinst.d/kexechibd \
		$(DESTDIR)$(SYSCONFDIR)/kernel/postinst.d/kexechibd
	$(INSTALL) -D -m 0755 systemd/kernel/postrm.d/kexechibd \
		$(DESTDIR)$(SYSCONFDIR)/kernel/postrm.d/kexechibd
	$(INSTALL) -D -m 0755 initramfs-tools/hooks/kexechibd \
		$(DESTDIR)$(INITRAMFSTOOLSDIR)/hooks/kexechibd
	$(INSTALL) -D -m 0755 initramfs-tools/scripts/local-premount/kexechib \
		$(DESTDIR)$(INITRAMFSTOOLSDIR)/scripts/local-premount/kexechib
	test -e $(DESTDIR)$(SYSCONFDIR)/kexechibd.conf || \
		$(INSTALL) -m 0644 systemd/kexechibd.conf.example $(DESTDIR)$(SYSCONFDIR)/kexechibd.conf

# ---------------------------------------------------------------- Debian package
# build/deb/kexechibd_<version>_amd64.deb (debian/control says why amd64;
# DEB_DIR=... puts it elsewhere).
# lintian reports what it finds and fails the target on an error.
# dpkg-buildpackage runs in a copy of the checkout's files (tracked and new,
# not ignored; outside git, every file but build/ and .venv/), so the build starts clean, leaves nothing in the checkout and
# does not touch .venv or the purgatory the tests use.
VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' kexechibd/__init__.py)
DEB_DIR ?= build/deb

deb: $(VENV)/.apt-stamp
	rm -rf $(DEB_DIR)/src $(DEB_DIR)/kexechibd_*
	mkdir -p $(DEB_DIR)/src/kexechibd-$(VERSION)
	{ if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard; \
	else find . \( -path ./build -o -path ./.venv -o -name __pycache__ \) -prune \
		-o -type f -print0; fi; } | \
		while IFS= read -r -d '' f; do [ ! -e "$$f" ] || printf '%s\0' "$$f"; done | \
		xargs -0 cp --parents -t $(DEB_DIR)/src/kexechibd-$(VERSION)
	cd $(DEB_DIR)/src/kexechibd-$(VERSION) && dpkg-buildpackage -b -us -uc
	mv $(DEB_DIR)/src/*.deb $(DEB_DIR)/src/*.buildinfo $(DEB_DIR)/src/*.changes $(DEB_DIR)/
	rm -rf $(DEB_DIR)/src
	lintian --fail-on error $(DEB_DIR)/kexechibd_$(VERSION)_*.changes
	@ls $(DEB_DIR)/*.deb

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	@$(MAKE) -s -C purgatory clean
