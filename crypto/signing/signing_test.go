package signing

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// newTestKey writes a fresh encrypted key pair to dir and returns the paths.
func newTestKey(t *testing.T, dir string, password string) (keyPath, pubPath string) {
	t.Helper()
	priv, pub, err := GenerateKeyPair([]byte(password))
	if err != nil {
		t.Fatal(err)
	}
	keyPath = filepath.Join(dir, "signing.key")
	pubPath = filepath.Join(dir, "signing.pub")
	if err := os.WriteFile(keyPath, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return keyPath, pubPath
}

func staticPassword(s string) PasswordFunc {
	return func() ([]byte, error) { return []byte(s), nil }
}

func TestSignVerifyRoundTrip(t *testing.T) {
	ctx := context.Background()
	keyPath, pubPath := newTestKey(t, t.TempDir(), "correct horse")
	s, err := LoadSigner(ctx, keyPath, staticPassword("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := LoadTrustedKeys(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("checkpoint bytes"))
	sig, err := s.Sign(ctx, digest)
	if err != nil {
		t.Fatal(err)
	}
	hint, err := trusted.VerifyDigest(digest, sig.Sig)
	if err != nil {
		t.Fatalf("VerifyDigest: %v", err)
	}
	if hint != s.KeyHint() {
		t.Errorf("VerifyDigest hint = %q, want %q", hint, s.KeyHint())
	}
	hint, err = trusted.VerifyBundle(digest, sig.Bundle)
	if err != nil {
		t.Fatalf("VerifyBundle: %v", err)
	}
	if hint != s.KeyHint() {
		t.Errorf("VerifyBundle hint = %q, want %q", hint, s.KeyHint())
	}
	// The bundle carries what the format promises.
	var b struct {
		MediaType            string
		VerificationMaterial struct{ PublicKey struct{ Hint string } }
		MessageSignature     struct {
			MessageDigest struct{ Algorithm, Digest string }
			Signature     string
		}
	}
	if err := json.Unmarshal(sig.Bundle, &b); err != nil {
		t.Fatal(err)
	}
	if b.MediaType != BundleMediaType || b.VerificationMaterial.PublicKey.Hint != s.KeyHint() ||
		b.MessageSignature.MessageDigest.Algorithm != "SHA2_256" || b.MessageSignature.Signature != string(sig.Sig) {
		t.Errorf("unexpected bundle: %s", sig.Bundle)
	}
	// A .sig with a trailing newline (written by hand) still verifies.
	if _, err := trusted.VerifyDigest(digest, append(bytes.Clone(sig.Sig), '\n')); err != nil {
		t.Errorf("VerifyDigest with trailing newline: %v", err)
	}
	if !bytes.Equal(s.PublicKeyPEM(), mustRead(t, pubPath)) {
		t.Error("PublicKeyPEM differs from the generated public key")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func TestTamper(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keyPath, pubPath := newTestKey(t, dir, "")
	s, err := LoadSigner(ctx, keyPath, staticPassword(""))
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := LoadTrustedKeys(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	otherKey, _ := newTestKey(t, otherDir, "")
	other, err := LoadSigner(ctx, otherKey, staticPassword(""))
	if err != nil {
		t.Fatal(err)
	}

	digest := sha256.Sum256([]byte("artifact"))
	good, err := s.Sign(ctx, digest)
	if err != nil {
		t.Fatal(err)
	}
	byOther, err := other.Sign(ctx, digest)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := DecodeSig(good.Sig)
	otherDigest := flip(digest[:], 0)
	// A bundle whose hint was stripped: still verifies by trying every key.
	noHint, _ := MarshalBundle(digest, der, "")
	// A bundle claiming our key's hint but signed by another key.
	otherDER, _ := DecodeSig(byOther.Sig)
	liar, _ := MarshalBundle(digest, otherDER, s.KeyHint())
	// A bundle over another digest, correctly signed.
	var od [32]byte
	copy(od[:], otherDigest)
	otherSig, _ := s.Sign(ctx, od)

	tests := []struct {
		name    string
		digest  [32]byte
		sig     []byte // .sig form, or nil
		bundle  []byte // bundle form, or nil
		wantErr error
	}{
		{"sig ok", digest, good.Sig, nil, nil},
		{"bundle ok", digest, nil, good.Bundle, nil},
		{"bundle without hint", digest, nil, noHint, nil},
		{"sig flipped DER byte", digest, EncodeSig(flip(der, len(der)-1)), nil, ErrBadSignature},
		{"sig not base64", digest, []byte("!!!!"), nil, ErrMalformed},
		{"sig empty", digest, []byte("\n"), nil, ErrMalformed},
		{"sig for other digest", od, good.Sig, nil, ErrBadSignature},
		{"sig by untrusted key", digest, byOther.Sig, nil, ErrBadSignature},
		{"bundle flipped signature", digest, nil, mustBundle(t, digest, flip(der, len(der)-1), s.KeyHint()), ErrBadSignature},
		{"bundle for other digest", digest, nil, otherSig.Bundle, ErrDigestMismatch},
		{"artifact digest flipped", od, nil, good.Bundle, ErrDigestMismatch},
		{"bundle by untrusted key", digest, nil, byOther.Bundle, ErrUntrustedKey},
		{"bundle lies about its key", digest, nil, liar, ErrBadSignature},
		{"bundle not JSON", digest, nil, []byte("{"), ErrMalformed},
		{"bundle unknown field", digest, nil, bytes.Replace(good.Bundle, []byte(`"mediaType"`), []byte(`"extra": 1, "mediaType"`), 1), ErrMalformed},
		{"bundle wrong media type", digest, nil, bytes.Replace(good.Bundle, []byte("v0.3"), []byte("v0.2"), 1), ErrMalformed},
		{"bundle sha512", digest, nil, bytes.Replace(good.Bundle, []byte("SHA2_256"), []byte("SHA2_512"), 1), ErrMalformed},
		{"bundle flipped byte anywhere", digest, nil, flip(good.Bundle, len(good.Bundle)/2), errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.sig != nil {
				_, err = trusted.VerifyDigest(tt.digest, tt.sig)
			} else {
				_, err = trusted.VerifyBundle(tt.digest, tt.bundle)
			}
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr == errAny && err != nil:
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// errAny accepts any of the named checks.
var errAny = errors.New("any")

func mustBundle(t *testing.T, d [32]byte, der []byte, hint string) []byte {
	t.Helper()
	b, err := MarshalBundle(d, der, hint)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	oldKey, oldPub := newTestKey(t, t.TempDir(), "")
	newKey, newPub := newTestKey(t, t.TempDir(), "")
	both := append(mustRead(t, oldPub), mustRead(t, newPub)...)
	trusted, err := ParseTrustedKeys(both)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(trusted.Hints()); n != 2 {
		t.Fatalf("got %d trusted keys, want 2", n)
	}
	digest := sha256.Sum256([]byte("x"))
	for _, k := range []string{oldKey, newKey} {
		s, err := LoadSigner(ctx, k, staticPassword(""))
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := s.Sign(ctx, digest)
		if h, err := trusted.VerifyDigest(digest, sig.Sig); err != nil || h != s.KeyHint() {
			t.Errorf("VerifyDigest(%s) = %q, %v", k, h, err)
		}
		if h, err := trusted.VerifyBundle(digest, sig.Bundle); err != nil || h != s.KeyHint() {
			t.Errorf("VerifyBundle(%s) = %q, %v", k, h, err)
		}
	}
}

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadSignerFormats(t *testing.T) {
	ctx := context.Background()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ec)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalPKCS8PrivateKey(p384)
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edder, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsader, _ := x509.MarshalPKCS8PrivateKey(rsaKey)

	encPriv, _, err := GenerateKeyPair([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(encPriv)

	tests := []struct {
		name    string
		ref     string
		pw      PasswordFunc
		wantErr string // substring; "" means success
	}{
		{"pkcs8", writePEM(t, "PRIVATE KEY", pkcs8), nil, ""},
		{"sec1", writePEM(t, "EC PRIVATE KEY", sec1), nil, ""},
		{"sigstore encrypted", writePEM(t, SigstorePrivateKeyPEMType, block.Bytes), staticPassword("pw"), ""},
		{"legacy cosign encrypted", writePEM(t, CosignPrivateKeyPEMType, block.Bytes), staticPassword("pw"), ""},
		{"wrong password", writePEM(t, SigstorePrivateKeyPEMType, block.Bytes), staticPassword("nope"), "wrong password"},
		{"p384", writePEM(t, "PRIVATE KEY", p384der), nil, "P-256"},
		{"ed25519 refused", writePEM(t, "PRIVATE KEY", edder), nil, "Ed25519"},
		{"rsa refused", writePEM(t, "PRIVATE KEY", rsader), nil, "ECDSA P-256"},
		{"missing file", filepath.Join(t.TempDir(), "missing"), nil, "no such file"},
		{"not pem", writeFile2(t, []byte("hello")), nil, "no PEM block"},
		{"unknown pem type", writePEM(t, "CERTIFICATE", []byte{1}), nil, "unsupported PEM block type"},
		{"gcpkms not linked", "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k", nil, "not built into ckvault"},
		{"azurekms not linked", "azurekms://vault.vault.azure.net/key", nil, "not built into ckvault"},
		{"unknown scheme", "evil://x", nil, "unknown key URI scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := LoadSigner(ctx, tt.ref, tt.pw)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d := sha256.Sum256([]byte(tt.name))
				der, err := s.SignDigest(ctx, d)
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(s.PublicKey(), d[:], der) {
					t.Fatal("signature does not verify")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "nope") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestLoadSignerKMSLinked(t *testing.T) {
	// The linked providers are reached (and fail for lack of a server or
	// credentials), rather than being refused as unknown.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	t.Setenv("VAULT_TOKEN", "x")
	_, err := LoadSigner(ctx, "hashivault://ckvault", nil)
	if err == nil {
		t.Fatal("expected an error without a Vault server")
	}
	if strings.Contains(err.Error(), "not built into") || strings.Contains(err.Error(), "unknown key URI") {
		t.Fatalf("hashivault:// should be linked: %v", err)
	}
}

func TestPasswordHelpers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte("s3cret\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw, err := PasswordFromFile(p)()
	if err != nil || string(pw) != "s3cret" {
		t.Fatalf("PasswordFromFile = %q, %v", pw, err)
	}
	t.Setenv(PasswordEnv, "")
	pw, err = PasswordFromEnv()()
	if err != nil || len(pw) != 0 {
		t.Fatalf("PasswordFromEnv = %q, %v", pw, err)
	}
	t.Setenv(PasswordEnv, "env pw")
	pw, _ = PasswordFromEnv()()
	if string(pw) != "env pw" {
		t.Fatalf("PasswordFromEnv = %q", pw)
	}
	if _, err := PasswordFromFile(filepath.Join(t.TempDir(), "missing"))(); err == nil {
		t.Fatal("missing password file accepted")
	}
}

func TestParseTrustedKeysRejects(t *testing.T) {
	priv, _, _ := GenerateKeyPair(nil)
	_, pub, _ := GenerateKeyPair(nil)
	for name, in := range map[string][]byte{
		"empty":       {},
		"private key": priv,
		"garbage":     []byte("not pem"),
		"trailing":    append(bytes.Clone(pub), []byte("junk")...),
	} {
		if _, err := ParseTrustedKeys(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseTrustedKeys(); err == nil {
		t.Error("no keys accepted")
	}
}

func FuzzVerifyBundle(f *testing.F) {
	_, pub, _ := GenerateKeyPair(nil)
	trusted, err := ParseTrustedKeys(pub)
	if err != nil {
		f.Fatal(err)
	}
	d := sha256.Sum256([]byte("seed"))
	b, _ := MarshalBundle(d, []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, "aGludA==")
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		// Nothing random verifies; the parser must not panic and must fail
		// with a named check.
		if _, err := trusted.VerifyBundle(d, in); err == nil {
			t.Fatal("random bundle verified")
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDigestMismatch) &&
			!errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUntrustedKey) {
			t.Fatalf("unnamed error: %v", err)
		}
	})
}

func FuzzDecodeSig(f *testing.F) {
	f.Add([]byte("MEUCIQ=="))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, in []byte) {
		der, err := DecodeSig(in)
		if err != nil {
			return
		}
		// Round trip: a decodable .sig re-encodes to its trimmed form.
		if got := EncodeSig(der); !bytes.Equal(got, bytes.TrimSpace(in)) {
			t.Fatalf("EncodeSig(DecodeSig(%q)) = %q", in, got)
		}
	})
}

func BenchmarkSignDigest(b *testing.B) {
	ctx := context.Background()
	keyPath, _ := newTestKey(&testing.T{}, b.TempDir(), "")
	s, err := LoadSigner(ctx, keyPath, staticPassword(""))
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

func writeFile2(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestVerifyDigestDER checks the raw-DER form against the .sig form: the
// same signature verifies both ways, under the same key, and the raw form
// refuses what the .sig form refuses.
func TestVerifyDigestDER(t *testing.T) {
	ctx := context.Background()
	keyPath, pubPath := newTestKey(t, t.TempDir(), "")
	s, err := LoadSigner(ctx, keyPath, staticPassword(""))
	if err != nil {
		t.Fatal(err)
	}
	_, otherPub := newTestKey(t, t.TempDir(), "")
	trusted, err := LoadTrustedKeys(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	untrusted, err := LoadTrustedKeys(otherPub)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("audit head"))
	der, err := s.SignDigest(ctx, digest)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := trusted.VerifyDigest(digest, EncodeSig(der)); err != nil || h != s.KeyHint() {
		t.Fatalf("VerifyDigest(.sig) = %q, %v", h, err)
	}
	other := sha256.Sum256([]byte("another head"))
	for _, tc := range []struct {
		name   string
		keys   *TrustedKeys
		digest [32]byte
		sig    []byte
		want   error // nil: verifies with s's hint
	}{
		{"good", trusted, digest, der, nil},
		{"flipped byte", trusted, digest, flip(der, len(der)-1), ErrBadSignature},
		{"other digest", trusted, other, der, ErrBadSignature},
		{"untrusted key", untrusted, digest, der, ErrBadSignature},
		{".sig text given as DER", trusted, digest, EncodeSig(der), ErrBadSignature},
		{"empty", trusted, digest, nil, ErrMalformed},
	} {
		for _, form := range []struct {
			name   string
			verify func([32]byte, []byte) (string, error)
		}{
			{"VerifyDigestDER", tc.keys.VerifyDigestDER},
			{"DER().VerifyDigest", tc.keys.DER().VerifyDigest},
		} {
			h, err := form.verify(tc.digest, tc.sig)
			switch {
			case tc.want == nil && (err != nil || h != s.KeyHint()):
				t.Errorf("%s: %s = %q, %v; want hint %q", tc.name, form.name, h, err, s.KeyHint())
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("%s: %s = %q, %v; want %v", tc.name, form.name, h, err, tc.want)
			}
		}
	}
	if _, err := (DERVerifier{}).VerifyDigest(digest, der); err == nil {
		t.Error("a zero DERVerifier verified a signature")
	}
}
