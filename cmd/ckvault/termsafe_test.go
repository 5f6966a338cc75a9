package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
)

// hostile is what an archive's author, a writer to the bucket or a
// client of the audit socket may put into a name: an erase-line sequence,
// a carriage return that returns over the row, a line separator, the C1
// CSI (which acts as ESC '[' on terminals that honour C1), a bidi
// override and a tab that would shift a column.
const hostile = "x\x1b[2K\rFORGED\u2028row\u009b2J\u202e\tcol"

// controlAt returns the offset of the first character in out that a
// terminal could act on, other than the line feeds that end rows, or -1.
func controlAt(out string) int {
	for i, r := range out {
		switch {
		case r == '\n':
		case r == utf8.RuneError:
			if _, n := utf8.DecodeRuneInString(out[i:]); n == 1 {
				return i
			}
		case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f, r == 0x2028, r == 0x2029,
			r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			return i
		}
	}
	return -1
}

func requireNoControls(t *testing.T, what, out string) {
	t.Helper()
	if i := controlAt(out); i >= 0 {
		t.Errorf("%s prints a raw control character at offset %d: %q", what, i, out[max(0, i-20):min(len(out), i+20)])
	}
}

// TestTablesEscapeHostileNames: list, inspect, audit query (table, json and
// jsonl) and the error line print hostile names escaped, never raw.
func TestTablesEscapeHostileNames(t *testing.T) {
	f := newVaultFixture(t)
	ctx := context.Background()

	// A key in the bucket that no writer made, named by an attacker with
	// write access to the store (a file store takes any file name).
	evil := filepath.Join(f.dir, "store", "data", "ns", hostile, "c", "20260313T214306Z-node-a-0123456789ab.manifest.json")
	if err := os.MkdirAll(filepath.Dir(evil), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(evil, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}

	// An archive whose member names are hostile, vaulted properly.
	p, err := samplearchive.WriteDir(t.TempDir(), samplearchive.Options{Namespace: "hostile", Pod: "p", Container: "c",
		Override: map[string][]byte{"checkpoint/" + hostile: []byte("x"), hostile: []byte("y")}})
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := testvault.Put(ctx, f.st, f.keys, p, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	id := m.Object[strings.LastIndexByte(m.Object, '-')+1:]

	for _, format := range []string{"table", "json"} {
		out, _, err := runCmd(t, "list", "--config", f.config, "-o", format)
		if exitCode(err) != exitVerifyFail {
			t.Fatalf("list -o %s: %v (want exit 3 for the unverifiable object)\n%s", format, err, out)
		}
		if !strings.Contains(out, `\u009b`) && !strings.Contains(out, `u009b`) {
			t.Errorf("list -o %s does not show the hostile key at all:\n%s", format, out)
		}
		requireNoControls(t, "list -o "+format, out)
	}

	for _, format := range []string{"table", "json"} {
		out, _, err := runCmd(t, "inspect", id, "--config", f.config, "-i", f.identity, "-o", format)
		if err != nil {
			t.Fatalf("inspect -o %s: %v", format, err)
		}
		if format == "table" && !strings.Contains(out, `x\x1b[2K\rFORGED\u2028row\u009b2J\u202e\tcol`) {
			t.Errorf("inspect does not show the member name escaped:\n%s", out)
		}
		requireNoControls(t, "inspect -o "+format, out)
	}

	// Records whose subject, actor and identity a client chose.
	l, err := audit.Open(audit.Path(f.stateDir), audit.Options{Node: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, audit.Record{Actor: hostile, Action: "fetched", Subject: "checkpoint-" + hostile + ".tar",
		Outcome: audit.OK, Detail: map[string]string{hostile: hostile}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"table", "json", "jsonl"} {
		out, _, err := runCmd(t, "audit", "query", "--config", f.config, "-o", format)
		if err != nil {
			t.Fatalf("audit query -o %s: %v", format, err)
		}
		if !strings.Contains(out, "FORGED") {
			t.Errorf("audit query -o %s lacks the hostile record:\n%s", format, out)
		}
		requireNoControls(t, "audit query -o "+format, out)
	}

	// The one error line on stderr.
	line := errorLines(errors.Join(errors.New("deleting "+hostile+": denied"), errors.New("second")))
	requireNoControls(t, "the error line", strings.TrimSuffix(line, "\n"))
	if want := "ckvault: deleting x\\x1b[2K\\rFORGED\\u2028row\\u009b2J\\u202e\\tcol: denied\n  second\n"; line != want {
		t.Errorf("error line %q, want %q", line, want)
	}
}
