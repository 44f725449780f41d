# nftknock — see README.md. The targets that touch the kernel need root.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin
PKGS    := ./config/... ./knock/... ./nft/... ./cmd/...
# Debian packages the tests drive: the kernel's own tools and the stock
# knock client. Installed by `make deps` when missing (Debian/Ubuntu only).
DEB_DEPS := nftables knockd iproute2 socat iputils-ping

.PHONY: all build test unit integration vet deps bench demo fuzz clean

all: build

build: $(BIN)/nftknockd

$(BIN)/nftknockd: FORCE
	$(GO) build -trimpath -o $@ ./cmd/nftknockd
FORCE:

deps:
	@missing=""; \
	for p in $(DEB_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

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

# Benchmarks: the packet path (parse + tracker step) and the end-to-end
# knock-to-open latency in namespaces (root).
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./knock/ ./nft/
	$(GO) test -run '^$$' -bench KnockToOpen -benchtime 60x -count 5 ./integration/ -args -race-daemon=false

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseIP -fuzztime 60s ./knock/
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 60s ./config/

demo: deps build
	$(GO) run ./integration/demo -daemon $(BIN)/nftknockd

clean:
	rm -rf $(BIN)
