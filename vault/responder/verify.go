package responder

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/checkpoint-vault/ckvault/internal/ctxio"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Report is the result of a successful Verify.
type Report struct {
	ID     string
	Object string
	// Manifest is the verified manifest.
	Manifest *manifest.Manifest
	// Checks lists the checks that passed, in order.
	Checks []string
	// SignedBy is the hint of the key that signed the ciphertext.
	SignedBy string
}

// Verify checks the vaulted checkpoint id without decrypting it
// (docs/FORMAT.md steps 1–4): the manifest's signature under a trusted key,
// the manifest's form, that it names this object, the ciphertext's
// signatures over the digest the manifest records, and the ciphertext's
// SHA-256 and size while it streams through. A failed check is a
// *CheckError. It is recorded in the audit trail.
func (r *Responder) Verify(ctx context.Context, id string) (*Report, error) {
	base, err := r.resolveAudited(ctx, "verified", id)
	if err != nil {
		return nil, err
	}
	rep := &Report{ID: idOf(base), Object: base}
	err = r.audited(ctx, "verified", base, nil, func(ctx context.Context) (map[string]string, error) {
		m, hint, err := r.verifiedManifest(ctx, base)
		if err != nil {
			return nil, err
		}
		rep.Manifest, rep.SignedBy = m, hint
		rep.Checks = []string{CheckManifestSignature, CheckManifest, CheckKeyBinding, CheckCiphertextSignature}
		if err := r.streamCiphertext(ctx, m); err != nil {
			return nil, err
		}
		rep.Checks = append(rep.Checks, CheckCiphertext)
		return map[string]string{"ciphertextSha256": m.Ciphertext.SHA256, "ciphertextSize": fmt.Sprint(m.Ciphertext.Size)}, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// verifiedManifest runs FORMAT.md steps 1–3 and the ciphertext signature
// check (both forms when both are present), which needs only the manifest.
func (r *Responder) verifiedManifest(ctx context.Context, base string) (*manifest.Manifest, string, error) {
	m, err := r.manifest(ctx, base)
	if err != nil {
		return nil, "", err
	}
	objs := m.Objects()
	sigs, err := r.signatures(ctx, base, objs.CiphertextSig, objs.CiphertextBundle, CheckCiphertextSignature)
	if err != nil {
		return nil, "", err
	}
	var hint string
	for _, s := range sigs {
		h, err := m.VerifyCiphertextSignature(r.Trusted, s)
		if err != nil {
			return nil, "", &CheckError{Check: CheckCiphertextSignature, Object: base, Err: err}
		}
		hint = h
	}
	return m, hint, nil
}

// streamCiphertext checks the ciphertext's size and SHA-256 against m.
func (r *Responder) streamCiphertext(ctx context.Context, m *manifest.Manifest) error {
	obj, err := r.Store.Open(ctx, m.Objects().Ciphertext)
	if err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return &CheckError{Check: CheckCiphertext, Object: m.Object, Err: fmt.Errorf("%s is missing: %w", m.Objects().Ciphertext, err)}
		}
		return err
	}
	defer obj.Close()
	if sz := obj.Info().Size; sz != m.Ciphertext.Size {
		return &CheckError{Check: CheckCiphertext, Object: m.Object, Err: fmt.Errorf("%w: %s is %d bytes in the store, the manifest says %d",
			manifest.ErrContentMismatch, m.Objects().Ciphertext, sz, m.Ciphertext.Size)}
	}
	hr := newHashingReader(ctxio.Reader(ctx, io.LimitReader(obj, m.Ciphertext.Size+1)), nil)
	sum, n, err := hr.finish()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("downloading %s: %w", m.Objects().Ciphertext, err)
	}
	if err := m.CheckCiphertext(sum, n); err != nil {
		return &CheckError{Check: CheckCiphertext, Object: m.Object, Err: err}
	}
	return nil
}
