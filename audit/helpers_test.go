package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// testKey is a P-256 key that is both a HeadSigner and a HeadVerifier,
// with the signing package's format: base64 of an ASN.1 signature.
type testKey struct{ priv *ecdsa.PrivateKey }

func newTestKey(t testing.TB) *testKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testKey{k}
}

func (k *testKey) SignDigest(_ context.Context, d [32]byte) ([]byte, error) {
	sig, err := ecdsa.SignASN1(rand.Reader, k.priv, d[:])
	if err != nil {
		return nil, err
	}
	return []byte(base64.StdEncoding.EncodeToString(sig)), nil
}

func (k *testKey) KeyHint() string {
	der, _ := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	s := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", s[:8])
}

func (k *testKey) VerifyDigest(d [32]byte, sig []byte) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(string(sig))
	if err != nil {
		return "", fmt.Errorf("signature is not base64: %w", err)
	}
	if !ecdsa.VerifyASN1(&k.priv.PublicKey, d[:], raw) {
		return "", errors.New("signature does not verify with trusted key " + k.KeyHint())
	}
	return k.KeyHint(), nil
}

func openTest(t testing.TB, key *testKey, mod func(*Options)) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", FileName)
	opts := Options{Node: "node-a", Signer: key, Verifier: key, SignEvery: 10}
	if mod != nil {
		mod(&opts)
	}
	l, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

func rec(action, ns, pod string, o Outcome) Record {
	return Record{Actor: "daemon", Action: action, Subject: "/var/lib/kubelet/checkpoints/x.tar",
		Namespace: ns, Pod: pod, Container: "c", Outcome: o, Detail: map[string]string{"size": "42"}}
}
