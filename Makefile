# nftknock — see README.md. The targets that touch the kernel need root.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin
PKGS    := ./config/... ./knock/... ./nft/... ./cmd/...
# Debian packages the tests drive: the kernel's own tools and the stock
# knock client. Installed by `make deps` when missing (Debian/Ubuntu only).
# systemd and man-db: `systemd-analyze verify` of the unit and of its man
# page references (no running systemd needed).
# nmap and hping3: the scans, stray TCP flags and the flood benchmark.
# openssh-client and openssh-server: public-key SPA doors (ssh-keygen,
# ssh-agent, ssh, and an sshd the tests run in a namespace).
# fwknop-client: the stock fwknop client, the real peer of the fwknop
# doors' lab test (integration/fwknop_test.go).
# debootstrap, systemd-container and openssh-client: the booted-systemd
# test (integration/systemd_boot_test.go) debootstraps a Debian root, boots
# it with systemd-nspawn and logs in to its sshd with ssh.
DEB_DEPS := nftables knockd iproute2 socat iputils-ping systemd man-db nmap hping3 \
	openssh-client openssh-server debootstrap systemd-container fwknop-client
# The neighbours the integration tests run next to the daemon, inside the
# lab's namespaces (integration/neighbours): Debian's Docker, firewalld and
# ufw, and busybox-static for the container's image. Installed without
# recommends, behind a policy-rc.d that exits 101, so that their maintainer
# scripts start no service on this machine; the policy-rc.d is removed
# after if `make deps` put it there.
NEIGHBOUR_DEPS := docker.io firewalld ufw busybox-static

# Version stamped into the binaries: -ldflags "-X main.version=…", for every
# command (`nftknockd -version`, `nftknock -version`).
ifeq ($(origin VERSION),undefined)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
LDFLAGS := -X main.version=$(VERSION)
# Static binaries (no cgo): nothing to depend on but the kernel.
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'

# make install: PREFIX and DESTDIR are honoured.
PREFIX     ?= /usr
SBINDIR    ?= $(PREFIX)/sbin
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
# Debian 12 keeps units in /lib/systemd/system (merged /usr makes it the
# same as /usr/lib); other prefixes in $(PREFIX)/lib/systemd/system.
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)

.PHONY: all build test unit integration vet deps bench bench-flood bench-fwknop demo fuzz clean

all: build

build: $(BIN)/nftknockd $(BIN)/nftknock

$(BIN)/nftknockd: FORCE
	$(GOBUILD) -o $@ ./cmd/nftknockd
$(BIN)/nftknock: FORCE
	$(GOBUILD) -o $@ ./cmd/nftknock
FORCE:

deps:
	@missing=""; neighbours=""; \
	for p in $(DEB_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for p in $(NEIGHBOUR_DEPS); do dpkg -s $$p >/dev/null 2>&1 || neighbours="$$neighbours $$p"; done; \
	[ -n "$$missing$$neighbours" ] || exit 0; \
	apt-get update -qq || exit 1; \
	guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && guard=1; \
	fi; rc=0; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || rc=1; \
	fi; \
	if [ -n "$$neighbours" ] && [ $$rc -eq 0 ]; then \
		echo "installing:$$neighbours"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$neighbours >/dev/null || rc=1; \
	fi; \
	[ -z "$$guard" ] || rm -f /usr/sbin/policy-rc.d; \
	exit $$rc

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $(PKGS)

# The integration tests build the daemon with -race themselves and run it in
# throwaway network namespaces; they need root. Under CI=true a missing
# privilege or tool fails them instead of skipping.
integration:
	$(GO) test -race -count=1 -timeout 20m ./integration/...

test: deps vet unit integration

# Benchmarks: the packet path, the kernel's side (grants, rotations), and
# what a user feels: knock to open, end to end in namespaces, beside the
# kernel doing the same alone (root). The knock benchmark pins the client
# to CPU 0 and the daemon to CPU 1: see integration/bench_test.go.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./knock/... ./nft/
	$(GO) test -run '^$$' -bench 'KnockToOpen|SPAToOpen' -benchtime 60x -count 3 ./integration/ -args -race-daemon=false
	$(MAKE) --no-print-directory bench-flood

# The daemon under random-source SYN floods on its first knock port
# (root): peak RSS, legitimate knocks opened, CPU per logged packet. The
# default config for 10 s and for 60 s (memory must stay flat), with two
# flooders, and with max_tracked 1024 and 1048576; each run fails above
# its RSS bound or under 5 of 5 opened, and all run and report whatever
# the others do.
bench-flood: deps $(BIN)/nftknockd
	rc=0; \
	for run in "-flood-for 10s" "-flood-for 60s" "-flooders 2 -flood-for 10s" "-max-tracked 1024 -flood-for 10s"; do \
		$(GO) run ./integration/flood -daemon $(BIN)/nftknockd -max-rss-mb 32 -min-open 5 $$run || rc=1; \
	done; \
	$(GO) run ./integration/flood -daemon $(BIN)/nftknockd -max-rss-mb 128 -min-open 5 -max-tracked 1048576 -flood-for 10s || rc=1; \
	exit $$rc

# nftknockd's fwknop door beside fwknopd 2.6.10 itself (root): SPA-to-open
# latency, legitimate packets opened under a random-source UDP flood on
# 62201, peak RSS; fwknopd with libpcap and its iptables backend, and with
# its UDP server (integration/fwknopcmp). Not part of `make test`: it
# installs fwknop-server and iptables (behind the policy-rc.d guard, so
# that no fwknopd starts on this machine), which nothing else needs.
FWKNOP_BENCH_DEPS := fwknop-client fwknop-server iptables hping3 util-linux
bench-fwknop: deps $(BIN)/nftknockd $(BIN)/nftknock
	@$(MAKE) --no-print-directory deps DEB_DEPS="$(FWKNOP_BENCH_DEPS)" NEIGHBOUR_DEPS=
	$(GO) run ./integration/fwknopcmp -daemon $(BIN)/nftknockd -nftknock $(BIN)/nftknock

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseIP -fuzztime 60s ./knock/
	$(GO) test -run '^$$' -fuzz 'FuzzParse$$' -fuzztime 60s ./config/
	$(GO) test -run '^$$' -fuzz FuzzLoadOneTime -fuzztime 60s ./config/
	$(GO) test -run '^$$' -fuzz FuzzTracker -fuzztime 60s ./knock/
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime 60s ./knock/spa/
	$(GO) test -run '^$$' -fuzz 'FuzzOpen$$' -fuzztime 60s ./knock/fwknop/
	$(GO) test -run '^$$' -fuzz FuzzOpenPlaintext -fuzztime 60s ./knock/fwknop/
	$(GO) test -run '^$$' -fuzz FuzzMigrateFwknop -fuzztime 60s ./cmd/nftknock/
	$(GO) test -run '^$$' -fuzz FuzzReadDNATRule -fuzztime 60s ./nft/
	$(GO) test -run '^$$' -fuzz FuzzElementComment -fuzztime 60s ./nft/
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime 60s ./knock/sshspa/
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 60s ./knock/authkeys/

demo: deps build
	$(GO) run ./integration/demo -daemon $(BIN)/nftknockd

.PHONY: install uninstall deb

# The binaries, the unit, the man pages, and the default config — which is
# never overwritten: an existing one is kept as it is.
install: build
	install -d -m 0755 $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BIN)/nftknockd $(DESTDIR)$(SBINDIR)/nftknockd
	install -m 0755 $(BIN)/nftknock $(DESTDIR)$(BINDIR)/nftknock
	sed -e 's|/usr/sbin/nftknockd|$(SBINDIR)/nftknockd|g' -e 's|/etc/nftknock|$(SYSCONFDIR)/nftknock|g' \
		cmd/nftknockd/nftknockd.service > $(DESTDIR)$(UNITDIR)/nftknockd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nftknockd.service
	install -m 0644 man/nftknockd.8 $(DESTDIR)$(MANDIR)/man8/nftknockd.8
	install -m 0644 man/nftknock.1 $(DESTDIR)$(MANDIR)/man1/nftknock.1
	install -m 0644 man/nftknock.toml.5 $(DESTDIR)$(MANDIR)/man5/nftknock.toml.5
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/nftknock
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/nftknock/nftknock.toml ]; then \
		echo "keeping the existing $(DESTDIR)$(SYSCONFDIR)/nftknock/nftknock.toml"; \
	else \
		echo "install -m 0600 config/default.toml $(DESTDIR)$(SYSCONFDIR)/nftknock/nftknock.toml"; \
		install -m 0600 config/default.toml $(DESTDIR)$(SYSCONFDIR)/nftknock/nftknock.toml; \
	fi

# Everything install put there but the config, which may hold your edits.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/nftknockd $(DESTDIR)$(BINDIR)/nftknock \
		$(DESTDIR)$(UNITDIR)/nftknockd.service \
		$(DESTDIR)$(MANDIR)/man8/nftknockd.8 $(DESTDIR)$(MANDIR)/man1/nftknock.1 \
		$(DESTDIR)$(MANDIR)/man5/nftknock.toml.5
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/nftknock/nftknock.toml"

# A .deb from this tree, with dpkg-deb alone: bin/nftknock_VERSION_ARCH.deb.
# The version is `git describe`: v1.2.3-4-gabc1234-dirty becomes
# 1.2.3+4.gabc1234.dirty; without a tag, 0~git<hash>, which sorts before
# any release.
DEB_ARCH       = $(shell dpkg --print-architecture)
DEB_VERSION    = $(shell v='$(VERSION)'; \
	case "$$v" in (v[0-9]*) v=$${v#v} ;; ([0-9]*.*) ;; (dev) v=0~dev ;; (*) v="0~git$$v" ;; esac; \
	echo "$$v" | sed -e 's/-\([0-9]*\)-g/+\1.g/' -e 's/[^A-Za-z0-9.+~]/./g')
DEB_MAINTAINER ?= nftknock developers <root@localhost>
DEB_ROOT       := $(BIN)/deb/root

deb:
	rm -rf $(BIN)/deb $(BIN)/nftknock_*.deb
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEB_ROOT)) PREFIX=/usr SYSCONFDIR=/etc \
		SBINDIR=/usr/sbin BINDIR=/usr/bin MANDIR=/usr/share/man UNITDIR=/lib/systemd/system VERSION='$(VERSION)'
	install -d -m 0755 $(DEB_ROOT)/DEBIAN
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e 's|@MAINTAINER@|$(DEB_MAINTAINER)|' \
		-e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)|" \
		packaging/deb/control.in > $(DEB_ROOT)/DEBIAN/control
	echo /etc/nftknock/nftknock.toml > $(DEB_ROOT)/DEBIAN/conffiles
	install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm $(DEB_ROOT)/DEBIAN/
	chmod 0644 $(DEB_ROOT)/DEBIAN/control $(DEB_ROOT)/DEBIAN/conffiles
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(BIN)/nftknock_$(DEB_VERSION)_$(DEB_ARCH).deb

clean:
	rm -rf $(BIN)
