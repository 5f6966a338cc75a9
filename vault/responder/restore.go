package responder

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// ActionRestored is the audit action of Restore.
const ActionRestored = "restored"

// Publisher takes a verified archive out of the vault in another form (for
// `ckvault restore`, an OCI checkpoint image pushed to a registry or
// written as an OCI layout).
//
// It is given the verified manifest and the archive, which has passed every
// check Fetch makes (its SHA-256 and size are m.Plaintext). It may read the
// archive any number of times, concurrently, through ReadAt; it must not
// keep it past its return, and it must not write the plaintext anywhere but
// its destination. It returns what the audit trail should record about the
// result (where it went, its digest; never content or secrets).
type Publisher func(ctx context.Context, m *manifest.Manifest, archive io.ReaderAt) (map[string]string, error)

// RestoreOptions tune Restore.
type RestoreOptions struct {
	FetchOptions
	// TempDir receives the decrypted archive while it is checked and
	// published (default: os.TempDir()). The file is 0600, and is
	// overwritten with zeros and removed before Restore returns, whatever
	// the outcome.
	TempDir string
	// Publish is called once the archive is verified. Required.
	Publish Publisher
}

// Restore fetches, verifies and decrypts the vaulted checkpoint id exactly
// as Fetch does, into a temporary file, and hands the verified archive to
// opts.Publish. Nothing reaches Publish before every check has passed.
//
// It is recorded as one audited action, ActionRestored: the intent before
// anything is read, and the outcome with the fetch's digests and the
// details Publish returns. The temporary file is destroyed (zeroed, removed)
// on every path, success included: the only plaintext that outlives Restore
// is what Publish put at its destination.
//
// Audit fails closed only up to the point of publication: if the outcome
// cannot be recorded after Publish succeeded, Restore returns an error, but
// what was published (a pushed image) cannot be taken back; the intent
// record, which names the request, is durable in any case.
func (r *Responder) Restore(ctx context.Context, id string, opts RestoreOptions) (*manifest.Manifest, error) {
	if opts.Publish == nil {
		return nil, fmt.Errorf("restore %s: no publisher", id)
	}
	dir := opts.TempDir
	if dir == "" {
		dir = os.TempDir()
	}
	base, err := r.resolveAudited(ctx, ActionRestored, id)
	if err != nil {
		return nil, err
	}
	var m *manifest.Manifest
	var tmp *os.File
	defer func() {
		if tmp != nil {
			destroy(tmp)
		}
	}()
	act := func(ctx context.Context) (map[string]string, error) {
		var err error
		m, _, err = r.verifiedManifest(ctx, base)
		if err != nil {
			return nil, err
		}
		tmp, err = os.CreateTemp(dir, ".ckvault-restore-*.tmp")
		if err != nil {
			return nil, &sinkError{fmt.Errorf("creating a temporary file in %s (choose another with --tmp-dir): %w", dir, err)}
		}
		if err := tmp.Chmod(0o600); err != nil {
			return nil, &sinkError{fmt.Errorf("restricting %s to 0600: %w", tmp.Name(), err)}
		}
		if err := r.decrypt(ctx, m, opts.Identities, newWritebackFile(tmp), progressFunc(opts.Progress, m.Ciphertext.Size)); err != nil {
			return nil, err
		}
		detail := fetchDetail(m, "(publisher)")
		delete(detail, "output")
		// Publish reads through ReadAt, never past the verified size: a
		// file that grew after verification cannot add bytes.
		pub, err := opts.Publish(ctx, m, io.NewSectionReader(tmp, 0, m.Plaintext.Size))
		maps.Copy(detail, pub)
		return detail, err
	}
	if err := r.audited(ctx, ActionRestored, base, nil, act, nil); err != nil {
		return nil, err
	}
	return m, nil
}
