# Build, run and test releasestatus. Only Node.js and npm need to be present:
# `npm ci` brings the pinned Bun and the dev tools.
PORT ?= 8080
TAG ?= releasestatus
RS_HOST ?= 127.0.0.1
BUN := node_modules/.bin/bun
SOURCES := $(wildcard *.ts) page.html package.json
BUILD_FLAGS := --compile --minify --no-compile-autoload-dotenv --no-compile-autoload-bunfig

.PHONY: run build test test-storage test-browser test-metrics check clean

run: releasestatus
	RS_PORT=$(PORT) RS_HOST=$(RS_HOST) ./releasestatus

build: releasestatus

releasestatus: $(SOURCES) $(BUN)
	$(BUN) build $(BUILD_FLAGS) --outfile $@ index.ts

$(BUN): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

test: releasestatus
	$(BUN) test

# Needs root: mounts a small tmpfs and fills it to prove a full disk changes nothing.
test-storage: releasestatus
	$(BUN) test ./test/storage.e2e.ts

# Needs Debian's chromium; screenshots land in artifacts/ (not committed).
test-browser: releasestatus
	$(BUN) test ./test/page.e2e.ts

# Needs promtool (Debian's prometheus package) to parse the exposition.
test-metrics: releasestatus
	$(BUN) test ./test/metrics.e2e.ts

check: $(BUN)
	node_modules/.bin/tsc --noEmit
	node_modules/.bin/biome check .

clean:
	rm -rf releasestatus releasestatus.exe dist coverage artifacts
