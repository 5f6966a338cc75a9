package s3store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// ListVersions calls fn for every version and delete marker under prefix,
// in lexical key order and, within a key, newest first (the order S3's
// ListObjectVersions returns). Keys that are not valid store keys were not
// written by ckvault and are skipped. A failure of fn stops the listing and
// is returned as is.
func (s *Store) ListVersions(ctx context.Context, prefix string, fn func(store.Version) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return err
	}
	// minio-go pages through the listing itself. A transient failure
	// before anything was delivered is retried; one in the middle fails
	// the listing, since restarting could report versions twice.
	for attempt := 0; ; attempt++ {
		delivered := 0
		err := func() error {
			lctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ch := s.c.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
				Prefix: s.fullKey(prefix), Recursive: true, WithVersions: true,
			})
			for c := range ch {
				if c.Err != nil {
					return c.Err
				}
				k := strings.TrimPrefix(c.Key, s.prefix)
				if store.ValidKey(k) != nil {
					continue // not written by ckvault: not addressable
				}
				delivered++
				v := store.Version{Key: k, VersionID: c.VersionID, IsLatest: c.IsLatest,
					DeleteMarker: c.IsDeleteMarker, Size: c.Size, LastModified: c.LastModified}
				if err := fn(v); err != nil {
					return &callbackError{err}
				}
			}
			return ctx.Err()
		}()
		var cbErr *callbackError
		if errors.As(err, &cbErr) {
			return cbErr.err
		}
		if err == nil {
			return nil
		}
		if delivered > 0 || attempt+1 >= s.attempts || !s.transient(err) {
			return s.wrap("list versions under", prefix, err)
		}
		if serr := sleep(ctx, s.backoff(attempt+1)); serr != nil {
			return s.wrap("list versions under", prefix, err)
		}
	}
}

type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// VersionLock reports the Object Lock state of one version (HEAD of that
// version). A delete marker has no lock state; asking for one is
// ErrNotExist.
func (s *Store) VersionLock(ctx context.Context, key, versionID string) (store.Lock, error) {
	if err := store.ValidKey(key); err != nil {
		return store.Lock{}, err
	}
	var st minio.ObjectInfo
	err := s.retry(ctx, func() error {
		var err error
		st, err = s.c.StatObject(ctx, s.bucket, s.fullKey(key), minio.StatObjectOptions{VersionID: versionID})
		return err
	})
	if err != nil {
		return store.Lock{}, s.wrap("stat", key, err)
	}
	if st.IsDeleteMarker {
		return store.Lock{}, fmt.Errorf("store %s: version %q of %q is a delete marker: %w", s.Describe(), versionID, key, store.ErrNotExist)
	}
	var l store.Lock
	if m := st.Metadata.Get("X-Amz-Object-Lock-Mode"); m != "" {
		l.Mode = strings.ToLower(m)
		if v := st.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				// An unreadable date must not read as "expired".
				return store.Lock{}, fmt.Errorf("store %s: %q version %q: unreadable retain-until date %q", s.Describe(), key, versionID, v)
			}
			l.Until = t
		}
	}
	l.LegalHold = strings.EqualFold(st.Metadata.Get("X-Amz-Object-Lock-Legal-Hold"), "ON")
	return l, nil
}

// DeleteVersion permanently removes one version (or delete marker) of key.
// Unlike Delete with a version id, it can bypass governance retention when
// opts says so explicitly; compliance retention and legal holds fail with
// ErrLocked, as the server enforces. Deleting a missing version succeeds.
func (s *Store) DeleteVersion(ctx context.Context, key, versionID string, opts store.DeleteOptions) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if versionID == "" {
		return fmt.Errorf("store %s: delete version of %q: no version id given (a versioned bucket would only add a delete marker)", s.Describe(), key)
	}
	err := s.retry(ctx, func() error {
		return s.c.RemoveObject(ctx, s.bucket, s.fullKey(key), minio.RemoveObjectOptions{
			VersionID: versionID, GovernanceBypass: opts.BypassGovernance,
		})
	})
	if err == nil {
		return nil
	}
	werr := s.wrap("delete", key, err)
	if errors.Is(werr, store.ErrNotExist) {
		return nil
	}
	return werr
}
