# Strata — see README.md. Everything runs from a clean clone.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
SERVERS_BIN = $(shell deploy/tools/servers.sh 2>/dev/null | tail -1)
MODULES := contracts internal pkg services/scheduler services/snapshotter services/transfer services/dedup services/merge services/verifier services/api cmd/strata e2e
SERVICES := scheduler snapshotter transfer dedup merge verifier api
PKGS := github.com/strata-backup/strata/...

.PHONY: all build servers test unit e2e vet fuzz bench demo clean tidy images up down e2e-compose bench-scale bench-peers bench-bigdisk bench-index bench-fleet bench-dense

# docker compose v2 plugin where present, Debian's docker-compose otherwise.
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# make up runs the locally built FROM-scratch infrastructure images.
export NATS_IMAGE ?= strata/nats-server:v2.15.2
export VERSITYGW_IMAGE ?= strata/versitygw:v1.8.0
export JAEGER_IMAGE ?= strata/jaeger:v1.76.0
export PROMETHEUS_IMAGE ?= strata/prometheus:v0.316.0

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ github.com/strata-backup/strata/cmd/strata github.com/strata-backup/strata/cmd/strata/probe \
		$(foreach s,$(SERVICES),github.com/strata-backup/strata/services/$(s)/cmd/strata-$(s)) \
		github.com/strata-backup/strata/e2e/cmd/strata-vcsim

# Real servers for tests: nats-server, versitygw, Jaeger (cached per version).
servers:
	@deploy/tools/servers.sh

vet:
	$(GO) vet $(PKGS)
	@big=$$(git ls-files -z | xargs -0 -r stat -c '%s %n' 2>/dev/null | awk '$$1 > 1048576 {print $$2}'); \
		test -z "$$big" || { echo "tracked files over 1 MB (build outputs or data?):"; echo "$$big"; exit 1; }
	@bad=$$(grep -rlE '"testing"|STRATA_TEST_' --include='*.go' pkg services cmd contracts | grep -v '_test\.go$$' | grep -v '/internal/'); \
		test -z "$$bad" || { echo "production code imports testing or reads STRATA_TEST_*:"; echo "$$bad"; exit 1; }
	@test -z "$$(gofmt -l $(MODULES))" || { gofmt -l $(MODULES); echo "gofmt needed"; exit 1; }
	@# The content layer alone knows where chunks live (issue 24): no pack or
	@# chunk key, no pack building and no Packed() outside pkg/repo (and the
	@# packages under it: packindex).
	@bad=$$(grep -rnE '\b(PackKey|ChunkKey|MovedKey|NewPack|PutPack|PackChunks)\(' --include='*.go' services cmd pkg | grep -v '^pkg/repo/' | grep -v '_test\.go:'); \
		test -z "$$bad" || { echo "object keys of the content layer used outside pkg/repo:"; echo "$$bad"; exit 1; }
	@bad=$$(grep -rn '\.Packed()' --include='*.go' services cmd pkg | grep -v '^pkg/repo/' | grep -v '_test\.go:'); \
		test -z "$$bad" || { echo "Packed() outside pkg/repo:"; echo "$$bad"; exit 1; }
	@bad=$$(grep -rn 'Catalog\.Update(\|\.update(ctx' --include='*.go' services cmd pkg | grep -v '^pkg/catalog/'); \
		test -z "$$bad" || { echo "record changes outside pkg/catalog's named transitions:"; echo "$$bad"; exit 1; }

unit:
	$(GO) test -race -count=1 $(shell $(GO) list $(PKGS) | grep -v /e2e)

e2e: servers
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -timeout 20m -v ./e2e/

# The test command (CI runs exactly this): unit tests, the process-level
# e2e suite, and the compose deployment under faults on the Docker engine.
test: servers vet unit e2e e2e-compose

fuzz:
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./manifest/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzReplies -fuzztime 30s ./nbd/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./chunk/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzPackIndex -fuzztime 30s ./repo/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzDecodeMoves -fuzztime 30s ./repo/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzServerConn -fuzztime 30s ./nbd/
	cd pkg && $(GO) test -run '^$$' -fuzz FuzzLVMConfig -fuzztime 30s ./guestfs/

# 1 GiB image through the six processes on real servers: prints backup and
# restore MB/s, chunks stored and the transfer worker's peak RSS; then a
# 4 GiB qemu-nbd disk (sparse, then fully allocated) with 2 % change:
# incremental time and storage amplification per chunk size. Also the S3
# client's per-request cost on versitygw and parallel compression; restore
# with 1/4/8 fetches against restic dump (local directory and S3) and NBD
# reads of a served backup; files cat (time, bytes fetched) and files get
# of a 1 GiB tree from a 4 GiB disk in S3.
bench: servers
	$(GO) test -count=1 -run '^$$' -bench BenchmarkMergeChain30On1TiB -benchtime 3x ./services/merge/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkDial -benchtime 50x ./pkg/nbd/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkTick -benchtime 20x ./services/scheduler/
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench BenchmarkS3Requests -benchtime 5000x ./pkg/objstore/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkEncodeParallel ./pkg/chunk/
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench 'BenchmarkBackupRestore|BenchmarkRestoreVsRestic|BenchmarkFiles|BenchmarkAmplification|BenchmarkVerify|BenchmarkCopy|BenchmarkLockExtension' -benchtime 1x -timeout 40m ./e2e/

# Zero set-up demo: strata dev + a generated disk, backed up and restored.
demo: build
	deploy/demo.sh $(BIN)

# Images FROM scratch, built on this host (no registry needed).
images: build servers
	deploy/docker/images.sh

# The HTTP trigger's bearer token for the compose deployment: made once,
# readable inside the container, kept in a directory only its owner enters.
deploy/secrets/api-token:
	@mkdir -p -m 700 deploy/secrets
	@head -c 24 /dev/urandom | base64 > $@ && chmod 644 $@
	@echo "wrote the HTTP trigger token to $@"

# The metrics scrape token (every service's /metrics and the prometheus
# service share it): made once, like the trigger token.
deploy/secrets/metrics-token:
	@mkdir -p -m 700 deploy/secrets
	@head -c 24 /dev/urandom | base64 > $@ && chmod 644 $@
	@echo "wrote the metrics scrape token to $@"

# NATS TLS certificates, one nkey per service and the servers'
# authorization: made once by strata nats-auth (delete the directory to
# make new ones).
deploy/secrets/nats/auth.conf: | build
	@mkdir -p -m 700 deploy/secrets
	$(BIN)/strata nats-auth --dir deploy/secrets/nats

# One S3 account per service (compose's s3-setup creates them in
# versitygw and sets the bucket policy): made once by strata s3-roles.
deploy/secrets/s3/transfer.env: | build
	@mkdir -p -m 700 deploy/secrets
	$(BIN)/strata s3-roles --dir deploy/secrets/s3

up: images deploy/secrets/api-token deploy/secrets/metrics-token deploy/secrets/nats/auth.conf deploy/secrets/s3/transfer.env
	@mkdir -p -m 755 deploy/secrets/notify
	$(COMPOSE) up -d --scale transfer=$${TRANSFERS:-3}
	deploy/docker/wait-healthy.sh $(COMPOSE)

down:
	$(COMPOSE) down -v --remove-orphans

# The compose deployment under faults, on this machine's Docker engine.
e2e-compose: images
	STRATA_COMPOSE="$(COMPOSE)" STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -timeout 30m -v -run TestCompose ./e2e/

# Strata against restic, kopia and borg on the same synthetic and realistic
# disks (full, next-day incremental, restore; best of ROUNDS=3); installs
# the peers when missing. See deploy/bench/peers.sh for its settings.
bench-peers: build
	deploy/bench/peers.sh $(BIN)

# A 16 TiB sparse disk (SIZE=…) backed up in full through strata dev.
bench-bigdisk: build
	deploy/bench/bigdisk.sh $(BIN)

# The dedup pack index and one shard of garbage collection's mark at
# 100 M synthetic chunks (SCALE_CHUNKS=…; the index file needs ~190 bytes a
# chunk under SCALE_DIR, default a temporary directory).
# The chunk map of a disk full of data (DENSE_TIB, 16 TiB of 256 KiB
# chunks) built, stored, read back and walked: peak heap, size, times.
bench-dense:
	STRATA_DENSE_TIB=$${DENSE_TIB:-16} STRATA_SCALE_DIR=$${SCALE_DIR:-} $(GO) test -count=1 -run '^$$' -bench 'DenseManifest' -benchtime 1x -timeout 2h github.com/strata-backup/strata/pkg/repo/

bench-index:
	STRATA_SCALE_CHUNKS=$${SCALE_CHUNKS:-100000000} STRATA_SCALE_DIR=$${SCALE_DIR:-} $(GO) test -count=1 -run '^$$' -bench 'IndexAtScale|MarkShardAtScale' -benchtime 1x -timeout 4h github.com/strata-backup/strata/pkg/repo/...

# A backup window on the compose deployment: STRATA_FLEET_VMS (1000) VMs
# from one template, one slot; backups/min, latency percentiles, messages,
# S3 requests and CPU per backup (STRATA_FLEET_WORKERS, STRATA_FLEET_MIB).
bench-fleet: servers images
	STRATA_COMPOSE="$(COMPOSE)" STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench BenchmarkComposeFleet -benchtime 1x -timeout 3h -v ./e2e/

# Throughput with 1, 2 and 4 rate-limited transfer workers.
# Transfer workers sharing backups: in-process (rate-limited workers), then
# on the compose deployment with each worker held to a share of a core.
bench-scale: servers images
	STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench 'BenchmarkScale' -benchtime 1x -timeout 20m ./e2e/
	STRATA_COMPOSE="$(COMPOSE)" STRATA_REQUIRE_SERVERS=1 $(GO) test -count=1 -run '^$$' -bench BenchmarkComposeScale -benchtime 1x -timeout 40m -v ./e2e/

tidy:
	for m in $(MODULES); do (cd $$m && $(GO) mod tidy); done

clean:
	rm -rf $(BIN)
