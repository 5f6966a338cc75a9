package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// example returns a complete, valid manifest.
func example(t testing.TB) *Manifest {
	t.Helper()
	m := &Manifest{
		Format:         FormatV1,
		Namespace:      "payments",
		Pod:            "api-7d9f8b6c5-x2k4q",
		Container:      "server",
		Node:           "node-a.example",
		CheckpointedAt: Time{time.Date(2026, 3, 13, 21, 43, 6, 0, time.UTC)},
		VaultedAt:      Time{time.Date(2026, 3, 13, 21, 43, 9, 250_000_000, time.UTC)},
		OriginalName:   "checkpoint-api-7d9f8b6c5-x2k4q_payments-server-2026-03-13T21:43:06Z.tar",
		Plaintext:      NewDigest(sha256.Sum256([]byte("plain")), 10<<20),
		Ciphertext:     NewDigest(sha256.Sum256([]byte("cipher")), 10<<20+160*16+1500),
		Recipients: []string{
			envelope.Fingerprint("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"),
			envelope.Fingerprint("age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg"),
		},
		Checkpoint: Checkpoint{
			Engine:      "cri-o",
			Runtime:     "runc",
			ContainerID: "3f1c6d2e9a7b4c5d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d",
			Image:       "registry.example/payments/api:1.4 <&>",
			ImageRef:    "registry.example/payments/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			CreatedAt:   Time{time.Date(2026, 3, 13, 20, 0, 0, 0, time.UTC)},
		},
		Archive: Archive{
			Members: 42, CheckpointSize: 9 << 20, MemoryPagesSize: 8 << 20, RootfsDiffSize: 4096,
			Files: []File{{"spec.dump", 3000}, {"config.dump", 700}, {"rootfs-diff.tar", 4096}},
		},
		ToolVersion: "ckvault v0.1.0",
	}
	key, err := BaseKey(m.KeyInput())
	if err != nil {
		t.Fatal(err)
	}
	m.Object = key
	return m
}

func TestMarshalGoldenAndRoundTrip(t *testing.T) {
	m := example(t)
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "v1.manifest.json")
	if *update {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("Marshal differs from %s (run with -update if intended):\n%s", golden, b)
	}
	// Sorting is Marshal's job and does not touch the caller's manifest.
	if m.Archive.Files[0].Name != "spec.dump" {
		t.Error("Marshal reordered the caller's slice")
	}
	p, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := p.Marshal()
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("round trip differs: %v", err)
	}
	// The same manifest in another time zone encodes identically.
	m.CheckpointedAt = Time{m.CheckpointedAt.In(time.FixedZone("+08", 8*3600))}
	b3, _ := m.Marshal()
	if !bytes.Equal(b, b3) {
		t.Error("encoding depends on the time zone")
	}
	if !bytes.Contains(b, []byte("<&>")) || !bytes.HasSuffix(b, []byte("}\n")) {
		t.Error("HTML escaped or no trailing newline")
	}
}

func TestParseRejects(t *testing.T) {
	good, err := example(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(good)
	edit := func(old, new string) []byte {
		if !strings.Contains(s, old) {
			t.Fatalf("test edit: %q not in manifest", old)
		}
		return []byte(strings.Replace(s, old, new, 1))
	}
	withManifest := func(f func(m *Manifest)) []byte {
		m := example(t)
		f(m)
		b, err := m.encode() // bypass Marshal's validation
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	m := example(t)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown field", edit(`"format"`, `"extra": 1,`+"\n  "+`"format"`), ErrMalformed},
		{"trailing data", append(bytes.Clone(good), []byte("{}")...), ErrMalformed},
		{"trailing newline extra", append(bytes.Clone(good), '\n'), ErrMalformed},
		{"duplicate key", edit(`"pod"`, `"pod": "other",`+"\n  "+`"pod"`), ErrMalformed},
		{"re-cased key", edit(`"pod"`, `"Pod"`), ErrMalformed},
		{"compact whitespace", bytes.ReplaceAll(good, []byte("\n  "), []byte("\n")), ErrMalformed},
		{"escaped html", edit(`<&>`, `\u003c&>`), ErrMalformed},
		{"not json", []byte("not json"), ErrMalformed},
		{"empty", nil, ErrMalformed},
		{"too large", bytes.Repeat([]byte(" "), MaxSize+1), ErrMalformed},
		{"not utf8", append(bytes.Clone(good[:20]), 0xff), ErrMalformed},
		{"future format", edit(FormatV1, "ckvault.dev/manifest/v3"), ErrUnsupportedFormat},
		{"v1 key under v2", edit(FormatV1, FormatV2), ErrInvalid},
		{"uppercase hex", edit(m.Plaintext.SHA256, strings.ToUpper(m.Plaintext.SHA256)), ErrInvalid},
		{"short hex", edit(m.Plaintext.SHA256, m.Plaintext.SHA256[:62]), ErrInvalid},
		{"negative size", withManifest(func(m *Manifest) { m.Archive.RootfsDiffSize = -1 }), ErrInvalid},
		{"ciphertext too small", withManifest(func(m *Manifest) { m.Ciphertext.Size = m.Plaintext.Size }), ErrInvalid},
		{"unsorted recipients", withManifest(func(m *Manifest) { m.Recipients[0], m.Recipients[1] = m.Recipients[1], m.Recipients[0] }), ErrInvalid},
		{"duplicate recipients", withManifest(func(m *Manifest) { m.Recipients[1] = m.Recipients[0] }), ErrInvalid},
		{"no recipients", withManifest(func(m *Manifest) { m.Recipients = nil }), ErrInvalid},
		{"bad fingerprint", withManifest(func(m *Manifest) { m.Recipients = []string{"age1abc"} }), ErrInvalid},
		{"non-UTC time", edit(`"2026-03-13T21:43:06Z"`, `"2026-03-14T05:43:06+08:00"`), ErrMalformed},
		{"non-canonical time", edit(`"2026-03-13T21:43:06Z"`, `"2026-03-13T21:43:06.000Z"`), ErrMalformed},
		{"missing vaultedAt", withManifest(func(m *Manifest) { m.VaultedAt = Time{} }), ErrInvalid},
		{"object re-pointed", withManifest(func(m *Manifest) { m.Object = "payments/other/server/x" }), ErrInvalid},
		{"pod changed, key not", withManifest(func(m *Manifest) { m.Pod = "other" }), ErrInvalid},
		{"size changed, key not", withManifest(func(m *Manifest) { m.Plaintext.Size++ }), ErrInvalid},
		{"bad engine", withManifest(func(m *Manifest) { m.Checkpoint.Engine = "docker" }), ErrInvalid},
		{"control char in image", withManifest(func(m *Manifest) { m.Checkpoint.Image = "x\x1b[2Jy" }), ErrInvalid},
		{"path in original name", withManifest(func(m *Manifest) { m.OriginalName = "../x.tar" }), ErrInvalid},
		{"pages over checkpoint", withManifest(func(m *Manifest) { m.Archive.MemoryPagesSize = m.Archive.CheckpointSize + 1 }), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse error = %v, want %v", err, tt.want)
			}
		})
	}
	// Lists must be encoded as Marshal encodes them: sorted, [] not null.
	m2 := example(t)
	m2.Archive.Files = nil
	b, err := m2.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"files": []`)) {
		t.Fatal(`empty files not encoded as []`)
	}
	if _, err := Parse(bytes.Replace(b, []byte(`"files": []`), []byte(`"files": null`), 1)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("null files accepted: %v", err)
	}
	unsorted := withManifest(func(m *Manifest) {}) // example's Files are unsorted
	if _, err := Parse(unsorted); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unsorted files: %v", err)
	}
}

func TestLayout(t *testing.T) {
	m := example(t)
	if !strings.HasPrefix(m.Object, "payments/api-7d9f8b6c5-x2k4q/server/20260313T214306Z-node-a.example-") {
		t.Fatalf("base key %q", m.Object)
	}
	if id := m.Object[strings.LastIndex(m.Object, "-")+1:]; len(id) != 12 || id != ShortID(m.KeyInput()) {
		t.Fatalf("short id %q", id)
	}
	// Stable for the same archive; different for any changed input.
	in := m.KeyInput()
	k1, _ := BaseKey(in)
	if k1 != m.Object {
		t.Fatal("BaseKey is not stable")
	}
	for name, f := range map[string]func(*KeyInput){
		"size":         func(i *KeyInput) { i.Size++ },
		"container id": func(i *KeyInput) { i.ContainerID += "0" },
		"file name":    func(i *KeyInput) { i.OriginalName += "x" },
		"node":         func(i *KeyInput) { i.Node = "node-b" },
		// Length prefixes: moving a byte between fields changes the id.
		"boundary": func(i *KeyInput) { i.ContainerID += "x"; i.OriginalName = i.OriginalName[1:] },
	} {
		c := in
		f(&c)
		if ShortID(c) == ShortID(in) {
			t.Errorf("%s: short id unchanged", name)
		}
	}
	o := ObjectsFor(m.Object)
	for _, n := range []string{o.Ciphertext, o.CiphertextSig, o.CiphertextBundle, o.Manifest, o.ManifestSig, o.ManifestBundle} {
		if b, ok := BaseKeyOf(n); !ok || b != m.Object {
			t.Errorf("BaseKeyOf(%q) = %q, %v", n, b, ok)
		}
	}
	if _, ok := BaseKeyOf(m.Object + ".txt"); ok {
		t.Error("unknown suffix accepted")
	}

	bad := []struct{ field, value string }{
		{"namespace", ""}, {"namespace", "a/b"}, {"namespace", ".."}, {"namespace", "a.b"},
		{"namespace", "Payments"}, {"namespace", "-a"}, {"namespace", strings.Repeat("a", 64)},
		{"pod", "a/../b"}, {"pod", "a..b"}, {"pod", "a\x00b"}, {"pod", "a\nb"}, {"pod", "a_b"}, {"pod", "a b"},
		{"container", "c/d"}, {"container", "ä"},
		{"node", "Node-A"}, {"node", "node/a"}, {"node", "."},
	}
	for _, b := range bad {
		c := in
		switch b.field {
		case "namespace":
			c.Namespace = b.value
		case "pod":
			c.Pod = b.value
		case "container":
			c.Container = b.value
		case "node":
			c.Node = b.value
		}
		if k, err := BaseKey(c); err == nil {
			t.Errorf("%s %q accepted: %q", b.field, b.value, k)
		} else if !strings.Contains(err.Error(), b.field) {
			t.Errorf("%s %q: error does not name the field: %v", b.field, b.value, err)
		}
	}
	c := in
	c.CheckpointedAt = time.Time{}
	if _, err := BaseKey(c); err == nil {
		t.Error("zero time accepted")
	}
}

func newSigner(t testing.TB, dir string) (*signing.Signer, *signing.TrustedKeys, string) {
	t.Helper()
	priv, pub, err := signing.GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "signing.key")
	pubPath := filepath.Join(dir, "signing.pub")
	if err := os.WriteFile(keyPath, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := signing.LoadSigner(context.Background(), keyPath, func() ([]byte, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	tk, err := signing.ParseTrustedKeys(pub)
	if err != nil {
		t.Fatal(err)
	}
	return s, tk, pubPath
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// flipSig flips a bit in the last byte of a .sig file's DER signature (part
// of the s integer), so the result is still well-formed base64 and DER but no
// longer a valid signature. Flipping a base64 character instead would, for
// '+' or '/', make the file malformed rather than wrong.
func flipSig(t *testing.T, sig []byte) []byte {
	t.Helper()
	der, err := signing.DecodeSig(sig)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-1] ^= 0x01
	return signing.EncodeSig(der)
}

func TestSignVerifyTamper(t *testing.T) {
	ctx := context.Background()
	s, trusted, _ := newSigner(t, t.TempDir())
	other, _, _ := newSigner(t, t.TempDir())
	m := example(t)
	signed, err := Sign(ctx, m, s)
	if err != nil {
		t.Fatal(err)
	}
	if signed.Objects.Manifest != m.Object+".manifest.json" {
		t.Fatalf("objects: %+v", signed.Objects)
	}
	key := m.Object

	// A second, validly signed manifest for another checkpoint: the
	// material of a replay.
	m2 := example(t)
	m2.Pod = "api-other"
	m2.Object, _ = BaseKey(m2.KeyInput())
	signed2, err := Sign(ctx, m2, s)
	if err != nil {
		t.Fatal(err)
	}
	byOther, err := Sign(ctx, m, other)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		manifest []byte
		sig      []byte
		key      string
		want     error
	}{
		{"good sig", signed.Manifest, signed.ManifestSig.Sig, key, nil},
		{"good bundle", signed.Manifest, signed.ManifestSig.Bundle, key, nil},
		{"flipped manifest byte, sig", flip(signed.Manifest, 100), signed.ManifestSig.Sig, key, signing.ErrBadSignature},
		{"flipped manifest byte, bundle", flip(signed.Manifest, 100), signed.ManifestSig.Bundle, key, signing.ErrDigestMismatch},
		{"flipped sig byte", signed.Manifest, flipSig(t, signed.ManifestSig.Sig), key, signing.ErrBadSignature},
		{"flipped bundle byte", signed.Manifest, flip(signed.ManifestSig.Bundle, len(signed.ManifestSig.Bundle)-20), key, nil},
		{"ciphertext sig used for manifest", signed.Manifest, signed.CiphertextSig.Sig, key, signing.ErrBadSignature},
		{"signed by untrusted key", byOther.Manifest, byOther.ManifestSig.Bundle, key, signing.ErrUntrustedKey},
		{"replayed under another key", signed2.Manifest, signed2.ManifestSig.Sig, key, ErrKeyMismatch},
		{"re-pointed to another object", signed.Manifest, signed.ManifestSig.Bundle, m2.Object, ErrKeyMismatch},
		{"manifest object name instead of base", signed.Manifest, signed.ManifestSig.Sig, signed.Objects.Manifest, ErrKeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Verify(tt.manifest, tt.sig, trusted, tt.key)
			switch {
			case tt.name == "flipped bundle byte":
				if err == nil {
					t.Fatal("tampered bundle accepted")
				}
			case tt.want == nil:
				if err != nil {
					t.Fatal(err)
				}
				if got.Object != key {
					t.Fatalf("object %q", got.Object)
				}
			case !errors.Is(err, tt.want):
				t.Fatalf("Verify error = %v, want %v", err, tt.want)
			}
		})
	}

	// An unsigned edit that is re-signed with a trusted key but leaves the
	// object field pointing elsewhere is caught by Parse's key derivation.
	m3 := example(t)
	m3.Node = "node-b"
	b, _ := m3.encode()
	sig, _ := s.Sign(ctx, sha256.Sum256(b))
	if _, err := Verify(b, sig.Sig, trusted, m3.Object); !errors.Is(err, ErrInvalid) {
		t.Fatalf("inconsistent object accepted: %v", err)
	}

	// The ciphertext's signature is over the digest in the manifest.
	got, _ := Verify(signed.Manifest, signed.ManifestSig.Sig, trusted, key)
	for _, f := range [][]byte{signed.CiphertextSig.Sig, signed.CiphertextSig.Bundle} {
		if _, err := got.VerifyCiphertextSignature(trusted, f); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := got.VerifyCiphertextSignature(trusted, signed2.CiphertextSig.Bundle); err != nil {
		// Same ciphertext digest in both examples: the bundle verifies, as it should.
		t.Fatal(err)
	}
	if _, err := got.VerifyCiphertextSignature(trusted, signed.ManifestSig.Bundle); !errors.Is(err, signing.ErrDigestMismatch) {
		t.Fatalf("manifest bundle accepted for ciphertext: %v", err)
	}
	sum, _ := got.Ciphertext.Sum()
	if err := got.CheckCiphertext(sum, got.Ciphertext.Size); err != nil {
		t.Fatal(err)
	}
	if err := got.CheckCiphertext(sum, got.Ciphertext.Size-1); !errors.Is(err, ErrContentMismatch) {
		t.Fatalf("truncated ciphertext: %v", err)
	}
	sum[0] ^= 1
	if err := got.CheckCiphertext(sum, got.Ciphertext.Size); !errors.Is(err, ErrContentMismatch) {
		t.Fatalf("flipped ciphertext digest: %v", err)
	}
	psum, _ := got.Plaintext.Sum()
	if err := got.CheckPlaintext(psum, got.Plaintext.Size); err != nil {
		t.Fatal(err)
	}
}

func TestSignRefusesInvalid(t *testing.T) {
	s, _, _ := newSigner(t, t.TempDir())
	m := example(t)
	m.Object = "elsewhere/x/y/z"
	if _, err := Sign(context.Background(), m, s); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Sign of an invalid manifest: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	good, err := example(f).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format":"ckvault.dev/manifest/v1"}`))
	f.Add(bytes.Replace(good, []byte(`"pod"`), []byte(`"Pod"`), 1))
	f.Add(append(bytes.Clone(good), good...))
	m := example(f)
	m.Archive.Files = nil
	m.Checkpoint.CreatedAt = Time{}
	b, _ := m.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Parse(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		// Round trip: anything accepted is canonical.
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not marshal: %v", err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("accepted non-canonical input:\n%q\n%q", in, out)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	good, err := example(b).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(good)))
	for b.Loop() {
		if _, err := Parse(good); err != nil {
			b.Fatal(err)
		}
	}
}
