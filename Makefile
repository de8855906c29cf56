# Moat: `make run` starts the broker on the sample files, `make test` runs every test.
# Both install what they need on a Debian machine with Go.

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests drive for real: mosquitto clients and broker (side-by-side
# checks), FUSE for gocryptfs, paho for the Home Assistant imitation, Chromium for MQTT.js,
# fail2ban for the fail2ban-regex check of the documented filter,
# podman (with runc, its network stack and debootstrap for local base images) for the
# image and the compose stacks.
APT_PKGS  := mosquitto mosquitto-clients fuse3 python3-paho-mqtt python3 chromium \
	fail2ban podman runc netavark aardvark-dns iptables debootstrap
IMAGE     ?= moat:$(VERSION)
TEST_TIMEOUT ?= 15m

.PHONY: all build run test deps vet fmt-check fuzz bench clean image

all: build

build: $(BIN)/moat $(BIN)/gocryptfs

$(BIN)/moat: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/moat

# gocryptfs is pinned by the tool directive in go.mod (v2.6.1 on go-fuse v2.8.0).
$(BIN)/gocryptfs: go.mod go.sum
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ github.com/rfjakob/gocryptfs/v2

FORCE:

run: build
	@chmod 600 sample/passwd # git does not keep the mode
	$(BIN)/moat serve -c sample/moat.conf

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# MQTT.js for the browser test, pinned by its package-lock.json.
	@if [ -f internal/e2e/browser/package-lock.json ] && { [ ! -f internal/e2e/browser/node_modules/.package-lock.json ] || \
		[ internal/e2e/browser/package-lock.json -nt internal/e2e/browser/node_modules/.package-lock.json ]; }; then \
		cd internal/e2e/browser && npm ci --no-audit --no-fund --loglevel=error; \
	fi

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The container image, with the version `moat version` reports. --format docker keeps
# the HEALTHCHECK (podman's default OCI format drops it); docker build works the same.
image:
	podman build --format docker --build-arg VERSION=$(VERSION) -t $(IMAGE) .

test: deps build fmt-check vet
	MOAT_BIN=$(CURDIR)/$(BIN)/moat GOCRYPTFS_BIN=$(CURDIR)/$(BIN)/gocryptfs MOAT_VERSION=$(VERSION) \
		$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

# Short coverage-guided runs of every parser fuzz target.
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./internal/...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

bench: build
	scripts/bench-core.sh

clean:
	rm -rf $(BIN)
