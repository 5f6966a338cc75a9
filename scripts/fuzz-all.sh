#!/usr/bin/env bash
# fuzz-all.sh runs every `func FuzzXxx` in the module for a short time
# (default 10s each). Seed corpora under testdata/fuzz run as ordinary tests
# in `go test` too; this adds coverage-guided exploration.
set -euo pipefail
cd "$(dirname "$0")/.."
time="${1:-10s}"
grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | sort | while read -r file; do
  dir="./$(dirname "${file#./}")"
  grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | sed 's/^func //' | while read -r fn; do
    echo "fuzz: $dir $fn ($time)"
    go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$time" -fuzzminimizetime 100x "$dir"
  done
done
