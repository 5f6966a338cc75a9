// Package testvault puts checkpoint archives into a store exactly as
// docs/FORMAT.md specifies and the daemon does, for tests of everything that
// reads a vault (the responder commands, the demo, the audit exporter).
//
// It is deliberately small and independent of the daemon's pipeline: a test
// of a reader must not depend on the writer it is meant to check. The steps
// are the format's, in the order a crash-safe writer uses them: ciphertext
// first (seal.NewReader → store.Put), then its signatures, then the
// manifest's signatures, then the manifest itself, whose appearance is what
// makes the checkpoint visible to `ckvault list`.
package testvault

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/seal"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// ToolVersion is what manifests written by this package record.
const ToolVersion = "testvault"

// Keys is a matching set of keys for a test vault.
type Keys struct {
	Signer     *signing.Signer
	Trusted    *signing.TrustedKeys
	Recipients *envelope.RecipientSet
	// Identity decrypts what is sealed to Recipients; IdentityText is its
	// encoding (secret), for writing an identity file.
	Identity     age.Identity
	IdentityText string
	// Recipient is the recipient string.
	Recipient string
}

// NewKeys makes a fresh signing key and age key pair (post-quantum hybrid
// unless classic). dir receives signing.key, signing.pub and age.key.
func NewKeys(dir string, classic bool) (*Keys, error) {
	priv, pub, err := signing.GenerateKeyPair(nil)
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, "signing.key")
	if err := os.WriteFile(keyPath, priv, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "signing.pub"), pub, 0o644); err != nil {
		return nil, err
	}
	s, err := signing.LoadSigner(context.Background(), keyPath, func() ([]byte, error) { return nil, nil })
	if err != nil {
		return nil, err
	}
	trusted, err := signing.ParseTrustedKeys(pub)
	if err != nil {
		return nil, err
	}
	idText, rcText, err := envelope.GenerateIdentity(!classic)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "age.key"), []byte(idText+"\n"), 0o600); err != nil {
		return nil, err
	}
	rc, err := envelope.ParseRecipient(rcText)
	if err != nil {
		return nil, err
	}
	rs, err := envelope.NewRecipientSet(rc)
	if err != nil {
		return nil, err
	}
	ids, err := age.ParseIdentities(strings.NewReader(idText))
	if err != nil {
		return nil, err
	}
	return &Keys{Signer: s, Trusted: trusted, Recipients: rs, Identity: ids[0], IdentityText: idText, Recipient: rcText}, nil
}

// Put vaults the archive at path for node into st: it reads the archive once
// to learn what it is (checkpoint.Parse), then once more to seal and upload
// it, and signs and uploads the manifest. It returns the manifest and the
// signed objects.
func Put(ctx context.Context, st store.Store, k *Keys, path, node string) (*manifest.Manifest, manifest.Signed, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, manifest.Signed{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, manifest.Signed{}, err
	}
	info, err := checkpoint.Parse(f, checkpoint.Limits{})
	if err != nil {
		return nil, manifest.Signed{}, fmt.Errorf("testvault: %s: %w", path, err)
	}
	base, err := manifest.NewKey(manifest.KeyInput{
		Namespace: info.Identity.Namespace, Pod: info.Identity.Pod, Container: info.Identity.Container,
		Node: node, CheckpointedAt: info.Checkpointed,
	})
	if err != nil {
		return nil, manifest.Signed{}, err
	}
	objs := manifest.ObjectsFor(base)

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, manifest.Signed{}, err
	}
	sr, err := seal.NewReader(ctx, f, fi.Size(), k.Recipients)
	if err != nil {
		return nil, manifest.Signed{}, err
	}
	defer sr.Close()
	if _, err := st.Put(ctx, objs.Ciphertext, sr, sr.Size(), store.PutOptions{ContentType: "application/octet-stream", IfAbsent: true}); err != nil {
		return nil, manifest.Signed{}, fmt.Errorf("testvault: uploading %s: %w", objs.Ciphertext, err)
	}
	d, ok := sr.Digests()
	if !ok {
		return nil, manifest.Signed{}, fmt.Errorf("testvault: sealing %s did not reach EOF", path)
	}
	m, err := manifest.New(manifest.Sealing{
		Object: base, Node: node, OriginalName: filepath.Base(path), Info: info,
		CheckpointedAt: info.Checkpointed,
		Plaintext:      manifest.NewDigest(d.PlaintextSHA256, d.PlaintextSize),
		Ciphertext:     manifest.NewDigest(d.CiphertextSHA256, d.CiphertextSize),
		Recipients:     k.Recipients.Fingerprints(), VaultedAt: time.Now(), ToolVersion: ToolVersion,
	})
	if err != nil {
		return nil, manifest.Signed{}, err
	}

	signed, err := manifest.Sign(ctx, m, k.Signer)
	if err != nil {
		return nil, manifest.Signed{}, err
	}
	for _, u := range signed.Uploads() {
		if _, err := st.Put(ctx, u.Key, bytes.NewReader(u.Data), int64(len(u.Data)), store.PutOptions{ContentType: u.ContentType, IfAbsent: true}); err != nil {
			return nil, manifest.Signed{}, fmt.Errorf("testvault: uploading %s: %w", u.Key, err)
		}
	}
	return m, signed, nil
}

// PutBytes stores b under key.
func PutBytes(ctx context.Context, st store.Store, key string, b []byte) error {
	if _, err := st.Put(ctx, key, strings.NewReader(string(b)), int64(len(b)), store.PutOptions{}); err != nil {
		return fmt.Errorf("testvault: uploading %s: %w", key, err)
	}
	return nil
}

// GetBytes reads the whole object key.
func GetBytes(ctx context.Context, st store.Store, key string) ([]byte, error) {
	o, err := st.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}
