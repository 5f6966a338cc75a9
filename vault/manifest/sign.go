package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
)

// Signed is everything Sign produces for one vaulted checkpoint, ready to
// upload under the names in Objects.
type Signed struct {
	Objects Objects
	// Manifest is the canonical manifest (Objects.Manifest).
	Manifest []byte
	// ManifestSig signs SHA-256(Manifest): Objects.ManifestSig and
	// Objects.ManifestBundle.
	ManifestSig signing.Signature
	// CiphertextSig signs the ciphertext's SHA-256 recorded in the
	// manifest: Objects.CiphertextSig and Objects.CiphertextBundle, which
	// `cosign verify-blob` checks against the downloaded .tar.age.
	CiphertextSig signing.Signature
}

// Sign encodes m canonically and signs both the manifest and the
// ciphertext digest it records. The ciphertext itself is not read: its
// digest was computed while it was encrypted.
func Sign(ctx context.Context, m *Manifest, s *signing.Signer) (Signed, error) {
	b, err := m.Marshal()
	if err != nil {
		return Signed{}, err
	}
	ms, err := s.Sign(ctx, sha256.Sum256(b))
	if err != nil {
		return Signed{}, fmt.Errorf("signing manifest %s: %w", m.Object, err)
	}
	sum, err := m.Ciphertext.Sum()
	if err != nil {
		return Signed{}, fmt.Errorf("%w: ciphertext.%v", ErrInvalid, err)
	}
	cs, err := s.Sign(ctx, sum)
	if err != nil {
		return Signed{}, fmt.Errorf("signing ciphertext of %s: %w", m.Object, err)
	}
	return Signed{Objects: m.Objects(), Manifest: b, ManifestSig: ms, CiphertextSig: cs}, nil
}

// ErrKeyMismatch: a validly signed manifest was found under another key
// than the one it records — moved, copied or replayed.
var ErrKeyMismatch = errors.New("manifest object key mismatch")

// ErrContentMismatch: a downloaded ciphertext or decrypted plaintext is
// not the one the manifest records (size or SHA-256 differ).
var ErrContentMismatch = errors.New("ciphertext does not match manifest")

// Verify checks a manifest fetched under the base key wantKey, in the order
// docs/FORMAT.md prescribes:
//
//  1. manifestSig (the .manifest.sig or the .manifest.sigstore.json
//     bytes, told apart by a leading "{") verifies over SHA-256 of the
//     exact manifestBytes under a trusted key — errors wrap the
//     signing.Err* sentinels;
//  2. the bytes parse strictly (Parse) — ErrMalformed, ErrInvalid,
//     ErrUnsupportedFormat;
//  3. the manifest's object key equals wantKey — ErrKeyMismatch.
//
// Signature first: no untrusted byte reaches the JSON decoder.
func Verify(manifestBytes, manifestSig []byte, trusted *signing.TrustedKeys, wantKey string) (*Manifest, error) {
	if len(manifestBytes) > MaxSize {
		return nil, fmt.Errorf("manifest %s: %w: %d bytes, more than the %d allowed", wantKey, ErrMalformed, len(manifestBytes), MaxSize)
	}
	sum := sha256.Sum256(manifestBytes)
	var err error
	if t := bytes.TrimSpace(manifestSig); len(t) > 0 && t[0] == '{' {
		_, err = trusted.VerifyBundle(sum, manifestSig)
	} else {
		_, err = trusted.VerifyDigest(sum, manifestSig)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest %s: signature check failed: %w", wantKey, err)
	}
	m, err := Parse(manifestBytes)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", wantKey, err)
	}
	if m.Object != wantKey {
		return nil, fmt.Errorf("%w: the manifest fetched as %s is signed for object %s; it was moved or replayed, do not trust the objects under %s",
			ErrKeyMismatch, wantKey+SuffixManifest, m.Object, wantKey)
	}
	return m, nil
}

// CheckCiphertext compares the SHA-256 and size of a downloaded ciphertext
// with the manifest. Callers compute both while streaming and call this
// before they treat any decrypted byte as good.
func (m *Manifest) CheckCiphertext(sum [32]byte, size int64) error {
	return check(m.Object+SuffixCiphertext, m.Ciphertext, sum, size)
}

// CheckPlaintext compares the SHA-256 and size of a decrypted archive with
// the manifest.
func (m *Manifest) CheckPlaintext(sum [32]byte, size int64) error {
	return check(m.Object+" (plaintext)", m.Plaintext, sum, size)
}

func check(what string, want Digest, sum [32]byte, size int64) error {
	got := NewDigest(sum, size)
	if got.Size != want.Size {
		return fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrContentMismatch, what, got.Size, want.Size)
	}
	if got.SHA256 != want.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, the manifest says %s", ErrContentMismatch, what, got.SHA256, want.SHA256)
	}
	return nil
}

// VerifyCiphertextSignature checks the ciphertext's .sig or .sigstore.json
// against the ciphertext digest the (already verified) manifest records.
// It is defence in depth and what stock cosign checks; the manifest
// signature alone already binds the ciphertext digest.
func (m *Manifest) VerifyCiphertextSignature(trusted *signing.TrustedKeys, sigOrBundle []byte) (hint string, err error) {
	sum, err := m.Ciphertext.Sum()
	if err != nil {
		return "", err
	}
	if t := bytes.TrimSpace(sigOrBundle); len(t) > 0 && t[0] == '{' {
		hint, err = trusted.VerifyBundle(sum, sigOrBundle)
	} else {
		hint, err = trusted.VerifyDigest(sum, sigOrBundle)
	}
	if err != nil {
		return "", fmt.Errorf("ciphertext %s: signature check failed: %w", m.Object+SuffixCiphertext, err)
	}
	return hint, nil
}

// Upload is one small object of a signed checkpoint: its key, content type
// and bytes.
type Upload struct {
	Key, ContentType string
	Data             []byte
}

// Uploads lists the objects a writer stores after the ciphertext, in the
// order it must store them: the signatures, then the manifest, whose
// presence marks the checkpoint complete.
func (s Signed) Uploads() []Upload {
	o := s.Objects
	return []Upload{
		{o.CiphertextSig, "text/plain", s.CiphertextSig.Sig},
		{o.CiphertextBundle, "application/json", s.CiphertextSig.Bundle},
		{o.ManifestSig, "text/plain", s.ManifestSig.Sig},
		{o.ManifestBundle, "application/json", s.ManifestSig.Bundle},
		{o.Manifest, "application/json", s.Manifest},
	}
}
