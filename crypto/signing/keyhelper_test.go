package signing

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/pem"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestMain makes this test binary able to act as the key-decryption
// helper, as cmd/ckvault's main does: every test here that loads an
// encrypted key goes through a real re-executed helper process unless it
// switches the helper off with inProcess.
func TestMain(m *testing.M) {
	DecryptHelperMain()
	os.Exit(m.Run())
}

// inProcess makes LoadSigner decrypt in this process for one test.
func inProcess(t *testing.T) {
	was := helperEnabled.Load()
	helperEnabled.Store(false)
	t.Cleanup(func() { helperEnabled.Store(was) })
}

func requireHelper(t *testing.T) {
	if !helperEnabled.Load() {
		t.Skip("no key-decryption helper on this platform")
	}
}

// TestHelperAndInProcessAgree loads one keygen-format key through the
// helper and in process: the same key comes out, and a wrong password is
// refused the same way.
func TestHelperAndInProcessAgree(t *testing.T) {
	requireHelper(t)
	ctx := context.Background()
	keyPath, _ := newTestKey(t, t.TempDir(), "correct horse")
	viaHelper, err := LoadSigner(ctx, keyPath, staticPassword("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	_, helperErr := LoadSigner(ctx, keyPath, staticPassword("wrong horse"))

	inProcess(t)
	local, err := LoadSigner(ctx, keyPath, staticPassword("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	_, localErr := LoadSigner(ctx, keyPath, staticPassword("wrong horse"))

	if !viaHelper.PublicKey().Equal(local.PublicKey()) {
		t.Fatal("the helper and in-process decryption give different keys")
	}
	if helperErr == nil || localErr == nil {
		t.Fatalf("wrong password accepted: helper %v, in process %v", helperErr, localErr)
	}
	if helperErr.Error() != localErr.Error() {
		t.Errorf("wrong password reported differently:\nhelper:     %v\nin process: %v", helperErr, localErr)
	}
	if !strings.Contains(helperErr.Error(), "wrong password or damaged key file") || strings.Contains(helperErr.Error(), "wrong horse") {
		t.Errorf("helper error %q: want the wrong-password message, without the password", helperErr)
	}
}

// TestHelperKeepsScryptOutOfHeap: loading keygen's key (scrypt N=2^16,
// r=8: a 64 MiB working buffer) through the helper allocates almost
// nothing in this process; in process it allocates the whole buffer, which
// is what set the daemon's peak RSS to 83 MiB.
func TestHelperKeepsScryptOutOfHeap(t *testing.T) {
	requireHelper(t)
	ctx := context.Background()
	keyPath, _ := newTestKey(t, t.TempDir(), "pw")
	allocated := func() uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := LoadSigner(ctx, keyPath, staticPassword("pw")); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	viaHelper := allocated()
	t.Logf("allocated by LoadSigner through the helper: %d KiB", viaHelper>>10)
	if viaHelper > 4<<20 {
		t.Errorf("LoadSigner allocated %d MiB in this process with the helper; scrypt must run in the helper", viaHelper>>20)
	}

	// The measurement can fail: in process the same load allocates
	// scrypt's 64 MiB here.
	inProcess(t)
	local := allocated()
	t.Logf("allocated by LoadSigner in process: %d MiB", local>>20)
	if local < 64<<20 {
		t.Errorf("in-process load allocated only %d MiB; the measurement above proves nothing", local>>20)
	}
}

// TestServeHelper drives the helper's side directly, including the
// requests a broken parent could send.
func TestServeHelper(t *testing.T) {
	priv, _, err := GenerateKeyPair([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(priv)
	good := encodeHelperRequest([]byte("pw"), block.Bytes)
	for _, tt := range []struct {
		name     string
		req      []byte
		wantExit int
		wantErr  string
	}{
		{"good", good, helperExitOK, ""},
		{"wrong password", encodeHelperRequest([]byte("nope"), block.Bytes), helperExitRejected, "decryption failed"},
		{"damaged key", encodeHelperRequest([]byte("pw"), bytes.Replace(block.Bytes, []byte(`"N":65536`), []byte(`"N":1048576`), 1)), helperExitRejected, "unsupported scrypt parameters"},
		{"empty", nil, helperExitFailed, "truncated length"},
		{"truncated", good[:len(good)-1], helperExitFailed, "malformed request"},
		{"trailing", append(bytes.Clone(good), 0), helperExitFailed, "trailing"},
		{"huge field", []byte{0xff, 0xff, 0xff, 0xff}, helperExitFailed, "malformed request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			code := serveHelper(bytes.NewReader(tt.req), &out, &errw)
			if code != tt.wantExit {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.wantExit, errw.String())
			}
			if tt.wantErr != "" {
				if !strings.Contains(errw.String(), tt.wantErr) || out.Len() != 0 {
					t.Fatalf("stderr %q stdout %d bytes; want %q and no key", errw.String(), out.Len(), tt.wantErr)
				}
				return
			}
			if _, err := parsePKCS8ECDSA(out.Bytes()); err != nil {
				t.Fatalf("helper output is not the key: %v", err)
			}
		})
	}
}

func parsePKCS8ECDSA(der []byte) (*ecdsa.PrivateKey, error) {
	b := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return parsePrivateKeyPEM(context.Background(), b, nil)
}

// TestBoundedBuffer: the parent keeps at most maxHelperOutput bytes
// of what a child writes and says so.
func TestBoundedBuffer(t *testing.T) {
	w := &boundedBuffer{buf: make([]byte, 4)}
	if n, err := w.Write([]byte("abcdef")); n != 6 || err != nil {
		t.Fatalf("Write = %d, %v; want everything accepted", n, err)
	}
	if string(w.bytes()) != "abcd" || !w.overflow {
		t.Fatalf("kept %q overflow %v", w.bytes(), w.overflow)
	}
}

// FuzzHelperRequest: the request decoder never panics, never returns a
// field beyond its bound, and round-trips what the encoder writes.
func FuzzHelperRequest(f *testing.F) {
	f.Add([]byte("pw"), []byte(`{"kdf":{}}`), []byte{})
	f.Add([]byte{}, []byte{}, []byte{0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, password, sealed, raw []byte) {
		if p, s, err := decodeHelperRequest(raw); err == nil {
			if len(p) > maxHelperField || len(s) > maxHelperField || 8+len(p)+len(s) != len(raw) {
				t.Fatalf("decoded %d+%d bytes from %d", len(p), len(s), len(raw))
			}
		}
		if len(password) > maxHelperField || len(sealed) > maxHelperField {
			return
		}
		p, s, err := decodeHelperRequest(encodeHelperRequest(password, sealed))
		if err != nil || !bytes.Equal(p, password) || !bytes.Equal(s, sealed) {
			t.Fatalf("round trip: %q %q %v", p, s, err)
		}
	})
}
