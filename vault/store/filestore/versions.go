package filestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// The file store keeps exactly one version of each key, with version id "".
// Deleting it removes the bytes for good: there are no delete markers.

// ListVersions calls fn for every object under prefix, in lexical key
// order, as its one (latest) version. It walks the directory once (List
// pages would walk it once per page).
func (s *Store) ListVersions(ctx context.Context, prefix string, fn func(store.Version) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return err
	}
	keys, err := s.keysUnder(ctx, prefix, "")
	if err != nil {
		return fmt.Errorf("file store %s: list versions under %q: %v", s.root, prefix, err)
	}
	for _, k := range keys {
		st, err := os.Lstat(s.dataPath(k))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since the walk
		}
		if err != nil {
			return fmt.Errorf("file store %s: list versions under %q: %v", s.root, prefix, err)
		}
		if err := fn(store.Version{Key: k, IsLatest: true, Size: st.Size(), LastModified: st.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// VersionLock reports the retention and legal hold of key's version.
func (s *Store) VersionLock(ctx context.Context, key, versionID string) (store.Lock, error) {
	if versionID != "" {
		return store.Lock{}, fmt.Errorf("file store %s: %q version %q: the file store keeps one version, with id \"\": %w", s.root, key, versionID, store.ErrNotExist)
	}
	if _, err := s.Stat(ctx, key); err != nil {
		return store.Lock{}, err
	}
	m, err := s.readMeta(key)
	if err != nil {
		return store.Lock{}, err
	}
	l := store.Lock{LegalHold: m.LegalHold}
	if m.Mode != "" {
		l.Mode, l.Until = m.Mode, m.RetainUntil
	}
	return l, nil
}

// DeleteVersion removes key for good unless a legal hold or compliance
// retention forbids it; governance retention yields to
// opts.BypassGovernance only. A missing object succeeds.
func (s *Store) DeleteVersion(ctx context.Context, key, versionID string, opts store.DeleteOptions) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if versionID != "" {
		return nil // no such version: the file store only has ""
	}
	if _, err := os.Lstat(s.dataPath(key)); errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return s.removeMeta(key)
	}
	m, err := s.readMeta(key)
	if err != nil {
		return err
	}
	now := s.now()
	switch {
	case m.LegalHold:
		return fmt.Errorf("file store %s: delete %q: legal hold is on: %w", s.root, key, store.ErrLocked)
	case m.Mode == "compliance" && now.Before(m.RetainUntil):
		return fmt.Errorf("file store %s: delete %q: compliance retention until %s (nobody can bypass it): %w",
			s.root, key, m.RetainUntil.UTC().Format(time.RFC3339), store.ErrLocked)
	case m.Mode == "governance" && now.Before(m.RetainUntil) && !opts.BypassGovernance:
		return fmt.Errorf("file store %s: delete %q: governance retention until %s: %w",
			s.root, key, m.RetainUntil.UTC().Format(time.RFC3339), store.ErrLocked)
	}
	dst := s.dataPath(key)
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store %s: delete %q: %v", s.root, key, err)
	}
	if err := s.removeMeta(key); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(dst)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store %s: delete %q: %v", s.root, key, err)
	}
	return nil
}

func (s *Store) removeMeta(key string) error {
	if err := os.Remove(s.metaPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("file store %s: delete metadata of %q: %v", s.root, key, err)
	}
	return nil
}
