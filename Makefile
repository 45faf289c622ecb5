# ganeti-ovf: set-up, tests, demo, benchmark, installation.
# Everything runs with Debian's /usr/bin/python3 (Ganeti's interpreter).

PYTHON      ?= /usr/bin/python3
PREFIX      ?= /usr
SBINDIR     ?= $(PREFIX)/sbin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
DESTDIR     ?=
# Where Debian's python3 finds modules for PREFIX: /usr/lib/python3/dist-packages
# for /usr, /usr/local/lib/python3.X/dist-packages for /usr/local; empty (and
# `make install` refuses) for a prefix the interpreter does not search.
PYLIBDIR    ?= $(shell $(PYTHON) -c 'import sys; p = "$(PREFIX)".rstrip("/"); \
                 d = p + "/lib/python3/dist-packages" if p == "/usr" else \
                 p + "/lib/python%d.%d/dist-packages" % sys.version_info[:2]; \
                 print(d if d in sys.path else "")')
HOOKDIR     ?= $(SYSCONFDIR)/ganeti/hooks/instance-export-post.d
PYTEST_ARGS ?=
# The library and its stage subpackages, installed as they are in the tree.
PACKAGES    = ganeti_ovf ganeti_ovf/package ganeti_ovf/descriptor ganeti_ovf/disks \
              ganeti_ovf/cluster

# Debian packages the project needs to run and to be tested.
DEB_RUNTIME = ganeti ganeti-os-noop qemu-utils python3-lxml python3-pyparsing \
              python3-cryptography util-linux libdeflate0 libisal2 pigz isal
DEB_TEST    = python3-pytest python3-mock python3-hypothesis tar openssl \
              man-db groff-base iproute2 procps python3-venv \
              dpkg-dev debhelper build-essential libisal-dev git time \
              qemu-system-x86 mtools syslinux dosfstools busybox-static
DEB_ALL     = $(DEB_RUNTIME) $(DEB_TEST)

.PHONY: all deps check test lint demo bench fuzz mutate install uninstall clean deb

all:
	@echo "Targets: check (install deps, run tests), demo, bench, fuzz, mutate, install, uninstall"

# Installs whatever is missing with apt (as root), once.
deps:
	@missing=""; for p in $(DEB_ALL); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq $$missing; \
	fi

check: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test: check

# ruff is not packaged in Debian 12: it comes from PyPI into a private venv.
RUFF_VENV ?= /var/tmp/ganeti-ovf-ruff
lint:
	test -x $(RUFF_VENV)/bin/ruff || { python3 -m venv $(RUFF_VENV) && \
	  $(RUFF_VENV)/bin/pip install -q ruff; }
	$(RUFF_VENV)/bin/ruff check ganeti_ovf tests hooks bench

demo: deps
	$(PYTHON) examples/demo.py

bench: deps
	$(PYTHON) bench/run.py

fuzz: deps
	GANETI_OVF_FUZZ_EXAMPLES=20000 $(PYTHON) -m pytest -q -p no:cacheprovider tests -k fuzz

# Mutation testing of the security-critical modules (not part of check: about
# half an hour on two cores).  MUTATE_ARGS: e.g. --max 0 (every mutant),
# --seed 2 (another sample), or module paths.
MUTATE_ARGS ?=
mutate: deps
	$(PYTHON) tests/support/mutate.py $(MUTATE_ARGS)

install:
	@test -n "$(PYLIBDIR)" || { echo "make $@: $(PYTHON) does not search a" \
	  "library directory under PREFIX=$(PREFIX); use PREFIX=/usr or /usr/local, or" \
	  "set PYLIBDIR (and PYTHONPATH for gnt-ovf) yourself" >&2; exit 1; }
	for package in $(PACKAGES); do \
	  install -d $(DESTDIR)$(PYLIBDIR)/$$package && \
	  install -m 0644 $$package/*.py $(DESTDIR)$(PYLIBDIR)/$$package/ || exit 1; done
	install -d $(DESTDIR)$(SBINDIR)
	install -m 0755 scripts/gnt-ovf $(DESTDIR)$(SBINDIR)/gnt-ovf
	install -d $(DESTDIR)$(MANDIR)/man8
	install -m 0644 man/gnt-ovf.8 $(DESTDIR)$(MANDIR)/man8/gnt-ovf.8
	if [ -f hooks/ovf-export ]; then \
	  install -d $(DESTDIR)$(HOOKDIR) && \
	  install -m 0755 hooks/ovf-export $(DESTDIR)$(HOOKDIR)/ganeti-ovf-export; fi
	if [ -f hooks/ovf-export.conf ]; then \
	  install -d $(DESTDIR)$(SYSCONFDIR)/ganeti && \
	  install -m 0644 hooks/ovf-export.conf $(DESTDIR)$(SYSCONFDIR)/ganeti/ovf-export.conf.example; fi

uninstall:
	@test -n "$(PYLIBDIR)" || { echo "make $@: $(PYTHON) does not search a" \
	  "library directory under PREFIX=$(PREFIX); use PREFIX=/usr or /usr/local, or" \
	  "set PYLIBDIR (and PYTHONPATH for gnt-ovf) yourself" >&2; exit 1; }
	rm -rf $(DESTDIR)$(PYLIBDIR)/ganeti_ovf
	rm -f $(DESTDIR)$(SBINDIR)/gnt-ovf $(DESTDIR)$(MANDIR)/man8/gnt-ovf.8
	rm -f $(DESTDIR)$(HOOKDIR)/ganeti-ovf-export
	rm -f $(DESTDIR)$(SYSCONFDIR)/ganeti/ovf-export.conf.example

deb:
	dpkg-buildpackage -us -uc -b

clean:
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache build bench-results
