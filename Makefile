# Berth: every install step lives here so a fresh Debian 12 machine (and CI) needs
# nothing but `make demo` or `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
GEN := gen
PROTOS := $(shell find protos -name '*.proto')
APT_PACKAGES := python3-venv python3-dev busybox-static iproute2 util-linux zstd nftables strace \
                docker-registry skopeo apache2-utils openssl
STAMP_APT := $(VENV)/.apt-stamp
STAMP_VENV := $(VENV)/.venv-stamp
STAMP_GEN := $(GEN)/.stamp
TEST_ARGS ?=

.PHONY: all setup apt venv protos demo test unit integration e2e e2e-compose lint bench bench-load bench-build clean \
        install daemon-start daemon-stop postgres

all: setup

setup: venv protos

$(STAMP_APT):
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

apt: $(STAMP_APT)

$(STAMP_VENV): requirements.txt requirements-dev.txt | $(STAMP_APT)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	# The repo root and the generated stubs are importable from the venv.
	echo "$(CURDIR)" > $$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/berth-src.pth
	echo "$(CURDIR)/$(GEN)" >> $$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/berth-src.pth
	touch $@

venv: $(STAMP_VENV)

# Python stubs are generated from protos/, never edited by hand.
$(STAMP_GEN): $(PROTOS) $(STAMP_VENV)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(VPY) -m grpc_tools.protoc -I protos --python_out=$(GEN) --pyi_out=$(GEN) \
	  --grpc_python_out=$(GEN) $(PROTOS)
	find $(GEN)/berth -type d -exec touch {}/__init__.py \;
	touch $@

protos: $(STAMP_GEN)

# A `berth` command on PATH that runs the CLI from this checkout's venv.
install: $(STAMP_GEN)
	printf '#!/bin/sh\nexec "%s" -m cli "$$@"\n' "$(CURDIR)/$(VPY)" > /usr/local/bin/berth
	chmod 0755 /usr/local/bin/berth

daemon-start: setup
	$(VPY) -m cli daemon start

daemon-stop:
	$(VPY) -m cli daemon stop

# One command: set up, start the services, import busybox, run a container.
demo: setup install
	$(VPY) -m cli daemon start
	$(VPY) -m tests.images busybox-rootfs.tar
	$(VPY) -m cli import busybox-rootfs.tar busybox:latest
	$(VPY) -m cli run --rm busybox echo "Hello from a Berth container: $$(uname -r) kernel, shared with the host"
	@echo "Services are running. Try: berth run --rm busybox uname -a ; berth daemon stop"

lint: setup
	$(VENV)/bin/ruff check services cli tests bench

unit: setup
	$(VPY) -m pytest -q tests/unit $(TEST_ARGS)

test: setup
	@if [ "$${BERTH_TEST_POSTGRES:-}" = 1 ]; then bash tests/postgres.sh; fi
	$(VPY) -m pytest -q tests $(TEST_ARGS)

# The e2e suite against the services running as containers under docker compose:
# installs docker.io/docker-compose if missing, starts a private dockerd unless one
# runs, builds the image (on a debootstrapped local base unless BASE_IMAGE is set),
# runs tests/e2e in the `tests` service and tears everything down.
e2e-compose: setup
	bash tests/compose/e2e.sh

# Run the suite against PostgreSQL: installs and starts a local server.
postgres:
	bash tests/postgres.sh

bench: setup
	$(VPY) -m bench

# Load: 50 concurrent clients / 500 containers, and 200 containers running at once.
bench-load: setup
	$(VPY) -m bench.load

bench-build: setup
	$(VPY) -m bench.build

clean:
	rm -rf $(GEN) $(VENV) .pytest_cache
