# The README's commands:
#   make demo   build ckvault and run `ckvault dev --demo`
#   make test   install the pinned test tools, then run every test, vet and
#               a short run of every fuzz target (this is what CI runs)
#   make bench  the benchmarks named in the issues, with their figures

export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false
GO ?= go
FUZZTIME ?= 10s

.PHONY: all build demo test tools vet cross race fuzz bench clean

all: build

build:
	$(GO) build -o ckvault ./cmd/ckvault

demo: build
	./ckvault dev --demo

tools:
	./scripts/install-test-tools.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...

# cross builds the client for the laptops responders and auditors use; only
# `daemon` and `dev` are Linux-only (they say so elsewhere).
cross:
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/ckvault
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/ckvault

test: tools vet cross
	CKVAULT_REQUIRE_TOOLS=1 $(GO) test -count=1 -timeout 25m ./...
	$(MAKE) race
	$(MAKE) fuzz

# race runs, under the race detector, the packages whose goroutines hand
# buffers to one another (the seal pipeline, the Inspector's feed, the
# watcher, the remote client's streams, the shred): some of their tests,
# e.g. TestInspectorWriterReusesBuffer, can only fail there. About 25 s.
race:
	$(GO) test -race -count=1 ./vault/checkpoint ./vault/seal ./vault/shred ./vault/watch ./vault/remote

# fuzz runs every fuzz target briefly. Each target is listed by
# scripts/fuzz-targets.sh so a new Fuzz function is picked up automatically.
fuzz:
	./scripts/fuzz-all.sh $(FUZZTIME)

bench: tools
	CKVAULT_REQUIRE_TOOLS=1 $(GO) test -run '^$$' -bench . -benchmem -benchtime 1x -timeout 60m ./...

clean:
	rm -f ckvault
