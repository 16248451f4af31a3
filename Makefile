# pylvs: `make test` runs every test, `make demo` shows the balancer at work.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean netdeps labdeps obsdeps keepalived-oracle

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py lvs/_intmap.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,teach]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check lvs lvsd schedulers forwarding checkers teaching tests benchmarks examples

test: venv lint netdeps obsdeps labdeps
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/core.py

# Tools the DR/TUN plane and its namespace tests use (root only; Debian packages):
# nft (nftables) for the director's rules, trafgen (netsniff-ng) for benchmarks,
# openssl for the SSL_GET checker test's self-signed certificate, keepalived
# (its VRRP half moves the VIP in the sync failover test).
netdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { ! command -v nft >/dev/null || ! command -v trafgen >/dev/null || ! command -v openssl >/dev/null || \
	      ! command -v keepalived >/dev/null; }; then \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables netsniff-ng openssl keepalived >/dev/null; \
	fi

# keepalived as the referee (issue 12): Debian's keepalived packed into the lab VM, then what it
# makes of tests/data/keepalived/*/keepalived.conf recorded beside each file (root; one VM at a time).
keepalived-oracle:
	command -v keepalived >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends keepalived
	oracle/keepalived-cpio.sh
	$(PYTHON) oracle/keepalived-record.py

# Tools the observability tests run (root only; Debian packages): promtool
# (prometheus) checks /metrics, prometheus-node-exporter reads lvsd --procfs,
# chromium renders the status page.
obsdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { ! command -v promtool >/dev/null || ! command -v prometheus-node-exporter >/dev/null || \
	      ! command -v chromium >/dev/null; }; then \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-node-exporter chromium >/dev/null; \
	fi

# The scheduler lab's browser test (root only; Debian packages): headless
# chromium, and DejaVu fonts so the page and the plots render the same anywhere.
labdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { ! command -v chromium >/dev/null || [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; }; then \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
