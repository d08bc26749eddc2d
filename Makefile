# Build, run and test releasestatus. Only Node.js and npm need to be present:
# `npm ci` brings the pinned Bun and the dev tools.
PORT ?= 8080
TAG ?= releasestatus
RS_HOST ?= 127.0.0.1
BUN := node_modules/.bin/bun
# Suites start real processes (the binary, databases, browsers): Bun's 5 s default is too tight on a busy machine.
TEST := $(BUN) test --timeout 20000
SOURCES := index.ts $(shell find src -type f) package.json
# --bytecode: parsed ahead of time, which saves ~2.5 ms of every start-up.
BUILD_FLAGS := --compile --minify --bytecode --no-compile-autoload-dotenv --no-compile-autoload-bunfig

.PHONY: run build test test-slow test-storage test-browser test-metrics test-container test-dist test-postgres container container-run dist bench check clean

# exec: the daemon replaces the shell, so it ends with whatever ends make (a killed terminal, Ctrl-C).
run: releasestatus
	exec env RS_PORT=$(PORT) RS_HOST=$(RS_HOST) ./releasestatus

build: releasestatus

releasestatus: $(SOURCES) $(BUN)
	$(BUN) build $(BUILD_FLAGS) --outfile $@ index.ts

$(BUN): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

test: releasestatus
	$(TEST)

# Real time beyond Bun's 10 s idle timeout: a waiter and an event stream are not cut.
test-slow: releasestatus
	$(TEST) ./test/idle.e2e.ts

# Needs root: mounts a small tmpfs and fills it to prove a full disk changes nothing.
test-storage: releasestatus
	$(TEST) ./test/storage.e2e.ts

# Needs Debian's chromium; screenshots land in artifacts/ (not committed), and docs/board.png, page.png and
# down.png, which the README shows, are taken anew.
test-browser: releasestatus
	$(TEST) ./test/page.e2e.ts

# Needs promtool (Debian's prometheus package) to parse the exposition.
test-metrics: releasestatus
	$(TEST) ./test/metrics.e2e.ts

# The image: the binary and an empty data directory are the whole build context.
container: releasestatus
	rm -rf build/image && mkdir -p build/image/data && cp releasestatus build/image/
	docker build -t $(TAG) -f Dockerfile build/image

# As the original's `run`: removed when it stops; state kept in the named volume.
# Published on loopback, as `make run` listens; PUBLISH=0.0.0.0 to publish on every interface.
PUBLISH ?= 127.0.0.1
container-run:
	exec docker run --rm -p $(PUBLISH):$(PORT):$(PORT) -e RS_PORT=$(PORT) -v $(TAG)-data:/data $(TAG)

# Release archives for every platform, as release tools publish them: a .tar.gz (a .zip for
# Windows) holding one folder releasestatus-VERSION-PLATFORM/ with the binary, README.md,
# LICENSE and docs/ (the pages the README links to), and SHA256SUMS over the archives.
# Reproducible: the files are staged in build/dist with fixed modes and times (SOURCE_DATE_EPOCH,
# else the last commit's), tar sorts names and drops owners, gzip -n drops the name and time, zip -X drops extra attributes. Needs zip (apt).
VERSION = $(shell node -p 'require("./package.json").version')
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DIST_TARGETS := linux-x64 linux-arm64 darwin-x64 darwin-arm64 windows-x64
DOCS := $(wildcard docs/*)
dist: $(SOURCES) $(BUN) README.md LICENSE $(DOCS)
	rm -rf dist build/dist && mkdir -p dist build/dist
	for t in $(DIST_TARGETS); do \
	  d=releasestatus-$(VERSION)-$$t; exe=releasestatus; \
	  case $$t in windows-*) exe=releasestatus.exe;; esac; \
	  mkdir -p build/dist/$$d/docs && cp README.md LICENSE build/dist/$$d/ && cp $(DOCS) build/dist/$$d/docs/ || exit 1; \
	  $(BUN) build $(BUILD_FLAGS) --target=bun-$$t --outfile build/dist/$$d/$$exe index.ts || exit 1; \
	  chmod 755 build/dist/$$d build/dist/$$d/docs build/dist/$$d/$$exe && \
	  chmod 644 build/dist/$$d/README.md build/dist/$$d/LICENSE build/dist/$$d/docs/* && \
	  touch -h -d @$(SOURCE_DATE_EPOCH) build/dist/$$d/docs/* build/dist/$$d/* build/dist/$$d || exit 1; \
	  case $$t in \
	    windows-*) (cd build/dist && TZ=UTC zip -q -X -9 ../../dist/$$d.zip $$d/ $$d/LICENSE $$d/README.md $$d/docs/ $$d/docs/* $$d/$$exe) ;; \
	    *) tar -C build/dist --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
	         -cf dist/$$d.tar $$d && gzip -9 -n dist/$$d.tar ;; \
	  esac || exit 1; \
	done
	cd dist && sha256sum releasestatus-* > SHA256SUMS

# Needs `file` to check each binary's format and architecture, and unzip to look into the .zip.
test-dist: dist releasestatus
	$(TEST) ./test/dist.e2e.ts

# Needs root and Debian's postgresql: a throwaway cluster on a loopback port. The replica
# tests, then the HTTP contract suite run unchanged on the PostgreSQL store.
test-postgres: releasestatus
	$(TEST) ./test/replicas.e2e.ts ./test/postgres-trust.e2e.ts
	$(BUN) run test/with-postgres.ts $(TEST) ./index.test.ts ./test/engine.test.ts ./test/access.test.ts ./test/freezes.test.ts ./test/webhooks-daemon.test.ts ./test/oidc.test.ts ./test/claims.test.ts ./test/postgres-batch.test.ts

# Needs a Docker engine and the base image (docker/distroless-stand-in.sh builds a stand-in offline).
test-container: container
	RS_TEST_IMAGE=$(TAG) $(TEST) ./test/container.e2e.ts ./index.test.ts

# Not part of `make test`: takes about fifteen minutes and needs wrk (apt). Writes bench/results.md.
# With Debian's postgresql installed (and root), it adds rows for the PostgreSQL store.
bench: releasestatus bench/reference
	if [ -d /usr/lib/postgresql ]; then $(BUN) run test/with-postgres.ts $(BUN) run bench/run.ts; \
	else $(BUN) run bench/run.ts; fi

# The floor the benchmark compares against, built exactly like releasestatus.
bench/reference: bench/reference.ts $(BUN)
	$(BUN) build $(BUILD_FLAGS) --outfile $@ bench/reference.ts

check: $(BUN)
	node_modules/.bin/tsc --noEmit
	node_modules/.bin/biome check .

clean:
	rm -rf releasestatus releasestatus.exe dist build coverage artifacts bench/reference bench/.work
