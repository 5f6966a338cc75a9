#!/usr/bin/env bash
# fuzz-all.sh runs every `func FuzzXxx` in the module for a short time
# (default 10s each). Seed corpora under testdata/fuzz run as ordinary tests
# in `go test` too; this adds coverage-guided exploration.
#
# -fuzzminimizetime 100x: Go minimizes every input that finds new coverage
# with a search quadratic in its length; with the default (60s per input)
# targets whose inputs are KB-sized (tar archives, PQ recipients) spent whole
# runs minimizing (FuzzPrescan: 79 execs in 10s; capped: ~38,000). A crasher
# is still written; rerun it with a larger value to shrink it further.
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
