package responder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// FetchOptions tune Fetch and FetchStream.
type FetchOptions struct {
	// Identities decrypt the checkpoint (from envelope.LoadIdentities).
	Identities []age.Identity
	// Force replaces an existing output file (only once the new one is
	// fully verified).
	Force bool
	// Progress, if set, is called from another goroutine with the
	// ciphertext bytes downloaded so far and the total.
	Progress func(done, total int64)
}

// ErrExists: the output file exists and FetchOptions.Force is not set.
var ErrExists = errors.New("output file exists")

// Fetch downloads, verifies and decrypts the vaulted checkpoint id into the
// file out. The ciphertext is read once: its SHA-256, age decryption and the
// plaintext's SHA-256 happen in the same pass, into a 0600 temporary file
// in out's directory. Only when the manifest, the signatures, the
// ciphertext and the plaintext all check out, and the fetch is recorded in
// the audit trail, is the file synced and renamed to out (and the directory
// synced). On any failure out does not appear (an existing one is left as
// it was) and the temporary file is overwritten and removed: it held
// unverified plaintext.
//
// It returns the verified manifest.
func (r *Responder) Fetch(ctx context.Context, id, out string, opts FetchOptions) (*manifest.Manifest, error) {
	if !opts.Force {
		if _, err := os.Lstat(out); err == nil {
			return nil, fmt.Errorf("%w: %s; choose another -o or pass --force to replace it", ErrExists, out)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("checking output %s: %w", out, err)
		}
	}
	dir := filepath.Dir(out)
	base, err := r.resolveAudited(ctx, "fetched", id)
	if err != nil {
		return nil, err
	}
	var m *manifest.Manifest
	var tmp *os.File
	published := false
	defer func() {
		if tmp != nil && !published {
			destroy(tmp)
		} else if tmp != nil {
			tmp.Close() // normally already closed by publish
		}
	}()
	act := func(ctx context.Context) (map[string]string, error) {
		var err error
		m, _, err = r.verifiedManifest(ctx, base)
		if err != nil {
			return nil, err
		}
		tmp, err = os.CreateTemp(dir, ".ckvault-fetch-*.tmp")
		if err != nil {
			return nil, &sinkError{fmt.Errorf("creating a temporary file next to %s: %w", out, err)}
		}
		if err := tmp.Chmod(0o600); err != nil {
			return nil, &sinkError{fmt.Errorf("restricting %s to 0600: %w", tmp.Name(), err)}
		}
		if err := r.decrypt(ctx, m, opts.Identities, newWritebackFile(tmp), progressFunc(opts.Progress, m.Ciphertext.Size)); err != nil {
			return nil, err
		}
		if err := tmp.Sync(); err != nil {
			return nil, &sinkError{fmt.Errorf("syncing %s: %w", tmp.Name(), err)}
		}
		return fetchDetail(m, out), nil
	}
	commit := func() error {
		return publish(tmp, out, opts.Force, &published)
	}
	if err := r.audited(ctx, "fetched", base, nil, act, commit); err != nil {
		return nil, err
	}
	return m, nil
}

// FetchStream is Fetch to a writer (`ckvault fetch -o -` with
// --unverified-stream). The checks are the same, but w receives plaintext
// as it is decrypted, before the end of the file is authenticated and the
// plaintext digest is checked: a consumer of w may see bytes of a
// truncated or tampered checkpoint, and must discard everything it read
// when FetchStream returns an error.
func (r *Responder) FetchStream(ctx context.Context, id string, w io.Writer, opts FetchOptions) (*manifest.Manifest, error) {
	base, err := r.resolveAudited(ctx, "fetched", id)
	if err != nil {
		return nil, err
	}
	var m *manifest.Manifest
	err = r.audited(ctx, "fetched", base, nil, func(ctx context.Context) (map[string]string, error) {
		var err error
		m, _, err = r.verifiedManifest(ctx, base)
		if err != nil {
			return nil, err
		}
		if err := r.decrypt(ctx, m, opts.Identities, w, progressFunc(opts.Progress, m.Ciphertext.Size)); err != nil {
			return nil, err
		}
		return fetchDetail(m, "(unverified stream)"), nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func fetchDetail(m *manifest.Manifest, out string) map[string]string {
	return map[string]string{
		"output":           out,
		"plaintextSha256":  m.Plaintext.SHA256,
		"plaintextSize":    fmt.Sprint(m.Plaintext.Size),
		"ciphertextSha256": m.Ciphertext.SHA256,
	}
}

func progressFunc(p func(done, total int64), total int64) func(int64) {
	if p == nil {
		return nil
	}
	var done atomic.Int64
	return func(n int64) { p(done.Add(n), total) }
}

// publish makes the synced temporary file appear as out: without force by
// a hard link, which fails if out appeared in the meantime, then removing
// the temporary name; with force by rename. The directory is synced so
// that the new name survives a crash.
//
// *published is set as soon as out names the file: from then on the
// temporary file must not be destroyed, as that would destroy out.
func publish(tmp *os.File, out string, force bool, published *bool) error {
	if force {
		if err := os.Rename(tmp.Name(), out); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", tmp.Name(), out, err)
		}
		*published = true
	} else {
		if err := os.Link(tmp.Name(), out); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %s appeared during the fetch; nothing was replaced, fetch again with --force to replace it", ErrExists, out)
			}
			return fmt.Errorf("linking %s to %s: %w", tmp.Name(), out, err)
		}
		*published = true
		if err := os.Remove(tmp.Name()); err != nil {
			return fmt.Errorf("removing temporary name %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", out, err)
	}
	d, err := os.Open(filepath.Dir(out))
	if err != nil {
		return fmt.Errorf("syncing directory of %s: %w", out, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory of %s: %w", out, err)
	}
	return nil
}

// destroy overwrites what was written to f with zeros, syncs, truncates,
// closes and removes it. It is best effort (the errors have nowhere useful
// to go) and, like any overwrite, reaches the old blocks only on
// filesystems that write in place (see SECURITY.md).
func destroy(f *os.File) {
	name := f.Name()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		zero := make([]byte, 1<<20)
		for off := int64(0); off < fi.Size(); off += int64(len(zero)) {
			n := min(int64(len(zero)), fi.Size()-off)
			if _, err := f.WriteAt(zero[:n], off); err != nil {
				break
			}
		}
		f.Sync()
		f.Truncate(0)
		f.Sync()
	}
	f.Close()
	os.Remove(name)
}
