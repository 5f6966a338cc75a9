package seal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

func newSet(t testing.TB, pq bool) (*envelope.RecipientSet, age.Identity) {
	t.Helper()
	id, rc, err := envelope.GenerateIdentity(pq)
	if err != nil {
		t.Fatal(err)
	}
	r, err := envelope.ParseRecipient(rc)
	if err != nil {
		t.Fatal(err)
	}
	set, err := envelope.NewRecipientSet(r)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader([]byte(id)))
	if err != nil {
		t.Fatal(err)
	}
	return set, ids[0]
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	rng.Read(b)
	return b
}

func TestSealDigestsAndRoundTrip(t *testing.T) {
	set, id := newSet(t, true)
	const c = envelope.ChunkSize
	for _, size := range []int{0, 1, c - 1, c, c + 1, bufSize - 1, bufSize, bufSize + 1, 3*bufSize + 7, 5*c + 3} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			plain := randomBytes(size, uint64(size))
			r, err := NewReader(t.Context(), bytes.NewReader(plain), int64(size), set)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, ok := r.Digests(); ok {
				t.Error("digests valid before EOF")
			}
			// Small, odd reads exercise Read rather than WriteTo.
			var ct bytes.Buffer
			buf := make([]byte, 7777)
			for {
				n, err := r.Read(buf)
				ct.Write(buf[:n])
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			d, ok := r.Digests()
			if !ok {
				t.Fatal("digests not valid after EOF")
			}
			if int64(ct.Len()) != r.Size() || d.CiphertextSize != r.Size() || d.PlaintextSize != int64(size) {
				t.Fatalf("sizes: got %d bytes, Size %d, digests %+v", ct.Len(), r.Size(), d)
			}
			if d.PlaintextSHA256 != sha256.Sum256(plain) {
				t.Error("plaintext digest is wrong")
			}
			if d.CiphertextSHA256 != sha256.Sum256(ct.Bytes()) {
				t.Error("ciphertext digest is wrong")
			}
			dr, err := envelope.Decrypt(&ct, id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(dr)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

func TestSealFunc(t *testing.T) {
	set, id := newSet(t, false)
	plain := randomBytes(2*bufSize+5, 1)
	var ct bytes.Buffer
	d, err := Seal(t.Context(), &ct, bytes.NewReader(plain), int64(len(plain)), set)
	if err != nil {
		t.Fatal(err)
	}
	if d.PlaintextSHA256 != sha256.Sum256(plain) || d.CiphertextSHA256 != sha256.Sum256(ct.Bytes()) || d.CiphertextSize != int64(ct.Len()) {
		t.Fatalf("digests %+v do not match", d)
	}
	dr, _ := envelope.Decrypt(&ct, id)
	if got, err := io.ReadAll(dr); err != nil || !bytes.Equal(got, plain) {
		t.Fatal("round trip failed")
	}
}

func TestSealSizeMismatch(t *testing.T) {
	set, _ := newSet(t, true)
	plain := randomBytes(3*bufSize, 2)
	for _, tc := range []struct {
		name     string
		actual   int
		declared int64
	}{
		{"short by one", len(plain) - 1, int64(len(plain))},
		{"long by one", len(plain), int64(len(plain) - 1)},
		{"empty but declared", 0, 10},
		{"declared empty", 1, 0},
		{"short at buffer boundary", bufSize, bufSize + 1},
		{"long at buffer boundary", bufSize + 1, bufSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Seal(t.Context(), io.Discard, bytes.NewReader(plain[:tc.actual]), tc.declared, set)
			if !errors.Is(err, ErrSizeMismatch) {
				t.Fatalf("error %v, want ErrSizeMismatch", err)
			}
		})
	}
}

type errReader struct{ n int }

func (e *errReader) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), e.n)
	e.n -= n
	return n, nil
}

func TestSealSourceError(t *testing.T) {
	set, _ := newSet(t, true)
	_, err := Seal(t.Context(), io.Discard, &errReader{n: bufSize + 3}, 10*bufSize, set)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk on fire")) {
		t.Fatalf("error %v does not carry the source error", err)
	}
}

// endless yields bytes forever, and counts them.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) { e.n += int64(len(p)); return len(p), nil }

func TestSealCancel(t *testing.T) {
	set, _ := newSet(t, true)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(t.Context())
	src := &endless{}
	r, err := NewReader(ctx, src, 1<<40, set)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	var readErr error
	for readErr == nil {
		_, readErr = r.Read(buf)
	}
	if !errors.Is(readErr, context.Canceled) {
		t.Errorf("read after cancel: %v, want context.Canceled", readErr)
	}
	r.Close()
	if src.n >= 1<<30 {
		t.Errorf("read %d bytes after cancellation", src.n)
	}
	// Goroutines are gone (allow the runtime a moment to reap them).
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines left running, %d before", n, before)
	}

	// Close without reading anything also stops it.
	r, err = NewReader(t.Context(), &endless{}, 1<<40, set)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := r.Read(buf); err == nil || err == io.EOF {
		t.Errorf("read after Close: %v", err)
	}
}

func TestSealDecryptsWithAgeCLI(t *testing.T) {
	agePath := testtools.Path(t, "age")
	dir := t.TempDir()
	id, rc, err := envelope.GenerateIdentity(true)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := dir + "/key"
	os.WriteFile(keyFile, []byte(id+"\n"), 0o600)
	r, _ := envelope.ParseRecipient(rc)
	set, _ := envelope.NewRecipientSet(r)
	plain := randomBytes(2*bufSize+99, 3)
	var ct bytes.Buffer
	if _, err := Seal(t.Context(), &ct, bytes.NewReader(plain), int64(len(plain)), set); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agePath, "-d", "-i", keyFile)
	cmd.Stdin = &ct
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("age -d: %v", err)
	}
	if !bytes.Equal(out, plain) {
		t.Fatal("age -d output differs from the plaintext")
	}
}
