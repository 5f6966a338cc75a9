// Package testtools finds the real, pinned binaries that tests run against
// (MinIO, versitygw, age, age-keygen, cosign, checkpointctl, crane).
//
// scripts/install-test-tools.sh installs them into a cache directory; `make
// test` runs that script first and sets CKVAULT_REQUIRE_TOOLS=1, so in CI a
// missing binary fails the test instead of skipping it. Run locally without
// the variable, a test that needs a missing tool skips and says how to get it.
package testtools

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Dir is the tool cache: $CKVAULT_TOOLS_DIR, or ~/.cache/ckvault/tools.
func Dir() string {
	if d := os.Getenv("CKVAULT_TOOLS_DIR"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return filepath.Join(os.TempDir(), "ckvault-tools")
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "ckvault", "tools")
}

// Required reports whether missing tools must fail tests (CI) rather than
// skip them (a developer's quick local run).
func Required() bool {
	return os.Getenv("CKVAULT_REQUIRE_TOOLS") == "1" || os.Getenv("CI") != ""
}

// envVar is the override for one tool: CKVAULT_<NAME>_BIN, e.g.
// CKVAULT_AGE_KEYGEN_BIN for age-keygen.
func envVar(name string) string {
	return "CKVAULT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_BIN"
}

// Lookup returns the path of tool name, or "" if it is not installed. The
// caller's PATH is deliberately not consulted: tests must run the pinned
// version, not whatever happens to be installed.
func Lookup(name string) string {
	if p := os.Getenv(envVar(name)); p != "" {
		return p
	}
	p := filepath.Join(Dir(), "bin", name)
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

// Path returns the path of tool name, failing the test in CI and skipping
// it locally when the tool is missing.
func Path(tb testing.TB, name string) string {
	tb.Helper()
	if p := Lookup(name); p != "" {
		return p
	}
	msg := "test tool " + name + " not found in " + filepath.Join(Dir(), "bin") +
		" (or $" + envVar(name) + "); install it with scripts/install-test-tools.sh or run `make test`"
	if Required() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// System returns a binary from the system PATH (for example Debian's age
// 1.1.1 for compatibility checks), skipping when it is absent: such tools
// are optional extras, never required.
func System(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Skipf("optional system tool %s not installed", name)
	}
	return p
}
