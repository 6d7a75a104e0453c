# Strata — see README.md. Everything runs from a clean clone.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
SERVERS_BIN = $(shell deploy/tools/servers.sh 2>/dev/null | tail -1)
MODULES := contracts pkg services/scheduler services/snapshotter services/transfer services/dedup services/merge services/verifier cmd/strata e2e
SERVICES := scheduler snapshotter transfer dedup merge verifier
PKGS := github.com/strata-backup/strata/...

.PHONY: all build servers test unit e2e vet fuzz bench demo clean tidy

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ github.com/strata-backup/strata/cmd/strata \
		$(foreach s,$(SERVICES),github.com/strata-backup/strata/services/$(s)/cmd/strata-$(s))

# Real servers for tests: nats-server, versitygw, Jaeger (cached per version).
servers:
	@deploy/tools/servers.sh

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $(MODULES))" || { gofmt -l $(MODULES); echo "gofmt needed"; exit 1; }

unit:
	$(GO) test -count=1 $(shell $(GO) list $(PKGS) | grep -v /e2e)

e2e: servers
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -timeout 20m -v ./e2e/

# The test command (CI runs exactly this).
test: servers vet unit e2e

fuzz:
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./manifest/

# 1 GiB image through the six processes on real servers: prints backup and
# restore MB/s, chunks stored and the transfer worker's peak RSS.
bench: servers
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench BenchmarkBackupRestore -benchtime 1x -timeout 20m ./e2e/

# Zero set-up demo: strata dev + a generated disk, backed up and restored.
demo: build
	deploy/demo.sh $(BIN)

tidy:
	for m in $(MODULES); do (cd $$m && $(GO) mod tidy); done

clean:
	rm -rf $(BIN)
