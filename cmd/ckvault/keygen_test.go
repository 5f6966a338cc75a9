package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// runKeygenCmd runs `ckvault keygen args...` in-process through the root
// command, as main does.
func runKeygenCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"keygen"}, args...))
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

var keygenFiles = []string{"age.key", "age.pub", "signing.key", "signing.pub"}

func TestKeygenWritesKeys(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		prefix  string
		idStart string
	}{
		{"post-quantum default", nil, "age1pq1", "AGE-SECRET-KEY-PQ-1"},
		{"classic", []string{"--classic"}, "age1", "AGE-SECRET-KEY-1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(signing.PasswordEnv, "pw")
			dir := filepath.Join(t.TempDir(), "keys") // missing: keygen creates it
			out, _, err := runKeygenCmd(t, append([]string{"--dir", dir}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(dir)
			if err != nil || st.Mode().Perm()&0o077 != 0 {
				t.Fatalf("dir mode: %v %v", st.Mode(), err)
			}
			for _, n := range keygenFiles {
				st, err := os.Stat(filepath.Join(dir, n))
				if err != nil {
					t.Fatal(err)
				}
				want := os.FileMode(0o644)
				if strings.HasSuffix(n, ".key") {
					want = 0o600
				}
				if st.Mode().Perm()&^want != 0 || st.Mode().Perm()&0o600 != 0o600 {
					t.Errorf("%s mode %v, want at most %v", n, st.Mode().Perm(), want)
				}
				if !strings.Contains(out, filepath.Join(dir, n)) {
					t.Errorf("output does not say where %s went:\n%s", n, out)
				}
			}
			rcpt := strings.TrimSpace(string(mustReadFile(t, filepath.Join(dir, "age.pub"))))
			if !strings.HasPrefix(rcpt, tt.prefix) || (tt.prefix == "age1" && strings.HasPrefix(rcpt, "age1pq1")) {
				t.Errorf("recipient %q, want prefix %q", rcpt, tt.prefix)
			}
			if !strings.Contains(out, rcpt) {
				t.Errorf("output does not print the recipient:\n%s", out)
			}
			if !strings.Contains(string(mustReadFile(t, filepath.Join(dir, "age.key"))), "\n"+tt.idStart) {
				t.Errorf("age.key does not hold a %s identity", tt.idStart)
			}
			// The signing pair loads and verifies with the env password.
			s, err := signing.LoadSigner(context.Background(), filepath.Join(dir, "signing.key"), signing.PasswordFromEnv())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(s.PublicKeyPEM(), mustReadFile(t, filepath.Join(dir, "signing.pub"))) {
				t.Error("signing.pub is not signing.key's public key")
			}
		})
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeygenRefuses(t *testing.T) {
	t.Setenv(signing.PasswordEnv, "")
	// Any one existing file: nothing is written, the error names it.
	for _, existing := range keygenFiles {
		t.Run("existing "+existing, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700)
			p := filepath.Join(dir, existing)
			if err := os.WriteFile(p, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := runKeygenCmd(t, "--dir", dir)
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "never overwrites") {
				t.Fatalf("error = %v", err)
			}
			if string(mustReadFile(t, p)) != "keep me" {
				t.Fatal("existing file changed")
			}
			for _, n := range keygenFiles {
				if n == existing {
					continue
				}
				if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
					t.Errorf("%s written although %s existed", n, existing)
				}
			}
		})
	}
	t.Run("dangling symlink", func(t *testing.T) {
		dir := t.TempDir()
		os.Chmod(dir, 0o700)
		target := filepath.Join(t.TempDir(), "stolen")
		os.Symlink(target, filepath.Join(dir, "age.key"))
		if _, _, err := runKeygenCmd(t, "--dir", dir); err == nil {
			t.Fatal("planted symlink accepted")
		}
		if _, err := os.Lstat(target); err == nil {
			t.Fatal("key written through a symlink")
		}
	})
	for _, mode := range []os.FileMode{0o770, 0o707, 0o1777} {
		t.Run("writable dir "+mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			_, _, err := runKeygenCmd(t, "--dir", dir)
			if err == nil || !strings.Contains(err.Error(), "writable") {
				t.Fatalf("error = %v", err)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Fatal("files written into a writable dir")
			}
		})
	}
	t.Run("no dir", func(t *testing.T) {
		_, _, err := runKeygenCmd(t)
		var u usageError
		if !errors.As(err, &u) || exitCode(err) != exitUsage {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("dir is a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		os.WriteFile(f, nil, 0o600)
		if _, _, err := runKeygenCmd(t, "--dir", f); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("error = %v", err)
		}
	})
}

func TestKeygenHelp(t *testing.T) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"keygen", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--dir", "--classic", "CKVAULT_SIGNING_PASSWORD", "Examples:", "never overwrites"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func runTool(t *testing.T, dir string, env []string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testtools.Path(t, name), args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, ".sigstore")), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestKeygenInterop: the stock tools accept keygen's keys: age decrypts
// what is encrypted to age.pub with age.key (post-quantum and classic), and
// cosign signs with signing.key while we verify with signing.pub.
func TestKeygenInterop(t *testing.T) {
	testtools.Path(t, "age")
	testtools.Path(t, "cosign")
	for _, classic := range []bool{false, true} {
		work := t.TempDir()
		dir := filepath.Join(work, "keys")
		args := []string{"--dir", dir}
		if classic {
			args = append(args, "--classic")
		}
		t.Setenv(signing.PasswordEnv, "s3cret pw")
		if _, _, err := runKeygenCmd(t, args...); err != nil {
			t.Fatal(err)
		}
		plain := []byte("memory pages of a checkpointed process\n")
		ct := runTool(t, work, nil, plain, "age", "-R", filepath.Join(dir, "age.pub"))
		got := runTool(t, work, nil, ct, "age", "-d", "-i", filepath.Join(dir, "age.key"))
		if !bytes.Equal(got, plain) {
			t.Fatalf("classic=%v: age round trip gave %q", classic, got)
		}

		blob := filepath.Join(work, "blob")
		os.WriteFile(blob, plain, 0o600)
		runTool(t, work, []string{"COSIGN_PASSWORD=s3cret pw"}, nil, "cosign", "sign-blob",
			"--key", filepath.Join(dir, "signing.key"), "--output-signature", "blob.sig", "--tlog-upload=false", "--yes", blob)
		trusted, err := signing.LoadTrustedKeys(filepath.Join(dir, "signing.pub"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trusted.VerifyDigest(sha256.Sum256(plain), mustReadFile(t, filepath.Join(work, "blob.sig"))); err != nil {
			t.Fatalf("verifying cosign's signature with signing.pub: %v", err)
		}
		runTool(t, work, nil, nil, "cosign", "verify-blob", "--key", filepath.Join(dir, "signing.pub"),
			"--signature", "blob.sig", "--insecure-ignore-tlog=true", blob)
	}
}
