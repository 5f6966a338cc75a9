package envelope

import (
	"bytes"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"golang.org/x/crypto/ssh"
)

var interopPlain = bytes.Repeat([]byte("checkpoint memory page "), 10000) // ~230 KB, 4 chunks

func encryptTo(t *testing.T, recipients ...string) []byte {
	t.Helper()
	set, err := NewRecipientSet(mustParse(t, Options{}, recipients...)...)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := set.Encrypt(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(interopPlain)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", filepath.Base(name), args, err, stderr.String())
	}
	return out
}

// We encrypt; stock age v1.3.2 decrypts.
func TestInteropAgeDecryptsOurs(t *testing.T) {
	agePath := testtools.Path(t, "age")
	dir := t.TempDir()
	for _, pq := range []bool{true, false} {
		id, rc, err := GenerateIdentity(pq)
		if err != nil {
			t.Fatal(err)
		}
		key := writeKey(t, dir, "key", id+"\n", 0o600)
		_, otherRc, _ := GenerateIdentity(pq)
		ct := encryptTo(t, rc, otherRc)
		if got := run(t, ct, agePath, "-d", "-i", key); !bytes.Equal(got, interopPlain) {
			t.Fatalf("pq=%v: age -d output differs", pq)
		}
	}
}

// Stock age-keygen and age -r / -R encrypt; we decrypt.
func TestInteropWeDecryptAge(t *testing.T) {
	agePath := testtools.Path(t, "age")
	keygen := testtools.Path(t, "age-keygen")
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
	}{{"pq", []string{"-pq"}}, {"classic", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			key := filepath.Join(dir, tc.name+".key")
			run(t, nil, keygen, append(tc.args, "-o", key)...)
			pub := bytes.TrimSpace(run(t, nil, keygen, "-y", key))
			r, err := ParseRecipient(string(pub))
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind.PostQuantum() != (tc.name == "pq") {
				t.Fatalf("age-keygen %v made a %s key", tc.args, r.Kind)
			}
			ids, err := LoadIdentities([]string{key}, IdentityOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rfile := writeKey(t, dir, tc.name+".pub", "# from age-keygen\n"+string(pub)+"\n", 0o644)
			for _, args := range [][]string{{"-r", string(pub)}, {"-R", rfile}} {
				ct := run(t, interopPlain, agePath, args...)
				pr, err := Decrypt(bytes.NewReader(ct), ids...)
				if err != nil {
					t.Fatalf("age %s: %v", args[0], err)
				}
				if got, err := io.ReadAll(pr); err != nil || !bytes.Equal(got, interopPlain) {
					t.Fatalf("age %s: plaintext differs (%v)", args[0], err)
				}
			}
		})
	}
	t.Run("ssh-ed25519", func(t *testing.T) {
		k, priv := genEd25519(t)
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			t.Fatal(err)
		}
		keyFile := writeKey(t, dir, "id_ed25519", string(pem.EncodeToMemory(block)), 0o600)
		ct := run(t, interopPlain, agePath, "-r", k.recipient)
		ids, err := LoadIdentities([]string{keyFile}, IdentityOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pr, err := Decrypt(bytes.NewReader(ct), ids...)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(pr); !bytes.Equal(got, interopPlain) {
			t.Fatal("plaintext differs")
		}
		// And the other way: stock age decrypts ours with the SSH key.
		if got := run(t, encryptTo(t, k.recipient), agePath, "-d", "-i", keyFile); !bytes.Equal(got, interopPlain) {
			t.Fatal("age -d with an SSH key: plaintext differs")
		}
	})
}

// Debian's age 1.1.1 (optional, only at /usr/bin/age) reads our classic files.
func TestInteropDebianAge(t *testing.T) {
	if _, err := os.Stat("/usr/bin/age"); err != nil {
		t.Skip("Debian's age is not installed at /usr/bin/age (apt-get install age)")
	}
	id, rc, err := GenerateIdentity(false)
	if err != nil {
		t.Fatal(err)
	}
	key := writeKey(t, t.TempDir(), "key", id+"\n", 0o600)
	if got := run(t, encryptTo(t, rc), "/usr/bin/age", "-d", "-i", key); !bytes.Equal(got, interopPlain) {
		t.Fatal("Debian age: plaintext differs")
	}
}
