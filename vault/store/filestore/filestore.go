// Package filestore is the embedded default store: objects are files under
// one local directory (a file:///path store URL).
//
// Layout under the root directory:
//
//	data/<key>                 the object's bytes (0600; directories 0700)
//	meta/<key>                 a JSON sidecar: size, CRC64NVME checksum,
//	                           retention and legal hold
//	data/<dir>/.ckvault-tmp-*  an upload in progress (removed by
//	                           AbortStaleUploads after a crash)
//
// Files appear whole or not at all: an object is written to a temporary file
// in its final directory, fsynced, renamed into place, and the directory is
// fsynced. A write or fsync error (a full disk, an I/O error) fails the Put;
// after the fsync the file's size must be exactly what was sent. The
// CRC64NVME reported is the one computed on the incoming stream: the file is
// not read back, because a re-read after fsync is served from the page cache
// and would prove nothing the fsync did not, at the cost of a second pass
// over an object of gigabytes.
//
// Retention (either mode, since there is no privileged bypass here) and
// legal hold are enforced by this package, by refusing Put and Delete of a
// locked key. They protect against the daemon's own mistakes, not against a
// local root user, who can remove the files directly.
package filestore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/crc64nvme"

	"github.com/checkpoint-vault/ckvault/internal/ctxio"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// tmpPrefix marks files that are uploads in progress. Keys may not contain
// a segment starting with it, so no object can be mistaken for one.
const tmpPrefix = ".ckvault-tmp-"

// defaultPageSize is the List page size when the caller passes limit <= 0.
const defaultPageSize = 1000

// Store is a directory of objects. It is safe for concurrent use by several
// goroutines; two processes writing the same key at once race as rename(2)
// does (last one wins, both whole).
type Store struct {
	root string
	now  func() time.Time
	// createMu serialises create-only Puts (PutOptions.IfAbsent) within
	// this process, the only writer a file store has.
	createMu sync.Mutex
}

var (
	_ store.Store   = (*Store)(nil)
	_ store.Checker = (*Store)(nil)
	_ store.Janitor = (*Store)(nil)
)

// New opens (creating if needed, mode 0700) the store rooted at dir, which
// must be an absolute path.
func New(dir string) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file store %q: path must be absolute: %w", dir, store.ErrPermanent)
	}
	s := &Store{root: filepath.Clean(dir), now: time.Now}
	for _, d := range []string{s.root, s.dataDir(), s.metaDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("file store %s: create %s: %v: %w", s.root, d, err, store.ErrPermanent)
		}
	}
	return s, nil
}

func (s *Store) dataDir() string { return filepath.Join(s.root, "data") }
func (s *Store) metaDir() string { return filepath.Join(s.root, "meta") }

func (s *Store) dataPath(key string) string {
	return filepath.Join(s.dataDir(), filepath.FromSlash(key))
}
func (s *Store) metaPath(key string) string {
	return filepath.Join(s.metaDir(), filepath.FromSlash(key))
}

// Describe names the store.
func (s *Store) Describe() string { return "file://" + filepath.ToSlash(s.root) }

// Check verifies that the root is a writable directory.
func (s *Store) Check(ctx context.Context) error {
	f, err := os.CreateTemp(s.dataDir(), tmpPrefix+"check-")
	if err != nil {
		return fmt.Errorf("file store %s: not writable: %v (fix the directory's owner and mode): %w", s.root, err, store.ErrPermanent)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func checkKey(key string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	for _, seg := range strings.Split(key, "/") {
		if strings.HasPrefix(seg, tmpPrefix) {
			return fmt.Errorf("invalid object key %q: segment uses the reserved prefix %q", key, tmpPrefix)
		}
	}
	return nil
}

// meta is the JSON sidecar of one object.
type meta struct {
	Size        int64          `json:"size"`
	Checksum    store.Checksum `json:"checksum"`
	Mode        string         `json:"retentionMode,omitempty"`
	RetainUntil time.Time      `json:"retainUntil,omitzero"`
	LegalHold   bool           `json:"legalHold,omitempty"`
}

func (m meta) locked(now time.Time) bool {
	return m.LegalHold || (m.Mode != "" && now.Before(m.RetainUntil))
}

// readMeta returns the sidecar of key, or a zero meta when there is none.
func (s *Store) readMeta(key string) (meta, error) {
	var m meta
	b, err := os.ReadFile(s.metaPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("file store %s: read metadata of %q: %v", s.root, key, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("file store %s: corrupt metadata of %q: %v", s.root, key, err)
	}
	return m, nil
}

// checkUnlocked refuses to change key while it is under retention or legal
// hold.
func (s *Store) checkUnlocked(key, op string) error {
	m, err := s.readMeta(key)
	if err != nil {
		return err
	}
	if !m.locked(s.now()) {
		return nil
	}
	if _, err := os.Lstat(s.dataPath(key)); errors.Is(err, fs.ErrNotExist) {
		return nil // stale sidecar of an object that never appeared
	}
	if m.LegalHold {
		return fmt.Errorf("file store %s: %s %q: legal hold is on: %w", s.root, op, key, store.ErrLocked)
	}
	return fmt.Errorf("file store %s: %s %q: %s retention until %s: %w",
		s.root, op, key, m.Mode, m.RetainUntil.UTC().Format(time.RFC3339), store.ErrLocked)
}

// Put writes the object whole, fsyncs it and checks its size.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return store.ObjectInfo{}, err
	}
	if size < 0 {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: negative size %d", s.root, key, size)
	}
	if err := opts.Retention.Validate(); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}
	if opts.IfAbsent {
		// Fail early, before the body is read; checked again under
		// createMu before the object is made visible.
		if err := s.checkAbsent(key); err != nil {
			return store.ObjectInfo{}, err
		}
	} else if err := s.checkUnlocked(key, "overwrite"); err != nil {
		return store.ObjectInfo{}, err
	}
	dst := s.dataPath(key)
	if err := mkdirAll(filepath.Dir(dst)); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), tmpPrefix+"*") // mode 0600
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	h := crc64nvme.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), ctxio.Reader(ctx, io.LimitReader(r, size)))
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %w", s.root, key, err)
	}
	if n != size {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: reader ended after %d of %d bytes", s.root, key, n, size)
	}
	var one [1]byte
	if m, _ := io.ReadFull(r, one[:]); m > 0 {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: reader has more than %d bytes", s.root, key, size)
	}
	sum := encodeSum(h)
	if err := tmp.Sync(); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: fsync: %v", s.root, key, err)
	}
	if err := checkSize(tmp, size); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v: %w", s.root, key, err, store.ErrIncomplete)
	}
	if err := tmp.Close(); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}

	if opts.IfAbsent {
		// Serialise create-only Puts from here on only: the existence
		// check, the sidecar and the rename must not interleave with
		// another create of the same key, but the copy above (a whole
		// ciphertext, perhaps slow) must not hold up every other create.
		s.createMu.Lock()
		defer s.createMu.Unlock()
		if err := s.checkAbsent(key); err != nil {
			return store.ObjectInfo{}, err
		}
	}
	// The sidecar goes first: a crash between the two renames leaves a
	// lock without an object (ignored) rather than an object without its
	// lock.
	m := meta{Size: size, Checksum: sum, LegalHold: opts.Retention.LegalHold}
	if opts.Retention.Mode != "" {
		m.Mode, m.RetainUntil = opts.Retention.Mode, opts.Retention.Until.UTC()
	}
	if err := s.writeMeta(key, m); err != nil {
		return store.ObjectInfo{}, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}
	done = true
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("file store %s: put %q: %v", s.root, key, err)
	}
	return s.Stat(ctx, key)
}

// checkAbsent refuses a create-only Put of a key that holds an object.
func (s *Store) checkAbsent(key string) error {
	if _, err := os.Lstat(s.dataPath(key)); err == nil {
		return fmt.Errorf("file store %s: create %q: %w", s.root, key, store.ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store %s: create %q: %v", s.root, key, err)
	}
	return nil
}

// checkSize compares f's size after fsync with what was written: a file
// truncated behind our back is not an object.
func checkSize(f *os.File, size int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != size {
		return fmt.Errorf("file holds %d bytes, %d were written", st.Size(), size)
	}
	return nil
}

func encodeSum(h hash.Hash64) store.Checksum {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.Sum64())
	return store.Checksum{Algorithm: store.ChecksumCRC64NVME, Value: base64.StdEncoding.EncodeToString(b[:])}
}

func (s *Store) writeMeta(key string, m meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.metaPath(key), b); err != nil {
		return fmt.Errorf("file store %s: write metadata of %q: %v", s.root, key, err)
	}
	return nil
}

// writeFileAtomic writes b to name whole or not at all.
func writeFileAtomic(name string, b []byte) error {
	dir := filepath.Dir(name)
	if err := mkdirAll(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), name); err != nil {
		return err
	}
	return syncDir(dir)
}

func mkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Stat returns the object's metadata.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return store.ObjectInfo{}, err
	}
	st, err := os.Lstat(s.dataPath(key))
	if err != nil || !st.Mode().IsRegular() {
		if err == nil || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return store.ObjectInfo{}, fmt.Errorf("file store %s: stat %q: %w", s.root, key, store.ErrNotExist)
		}
		return store.ObjectInfo{}, fmt.Errorf("file store %s: stat %q: %v", s.root, key, err)
	}
	return s.info(key, st)
}

func (s *Store) info(key string, st fs.FileInfo) (store.ObjectInfo, error) {
	m, err := s.readMeta(key)
	if err != nil {
		return store.ObjectInfo{}, err
	}
	oi := store.ObjectInfo{Key: key, Size: st.Size(), LastModified: st.ModTime(), LegalHold: m.LegalHold}
	if m.Mode != "" {
		oi.RetainUntil = m.RetainUntil
	}
	// A sidecar of another size is left over from a Put that crashed
	// between its two renames: its checksum is not this file's.
	if m.Size == st.Size() {
		oi.Checksum = m.Checksum
	}
	return oi, nil
}

// Open opens the object for streaming and random access.
func (s *Store) Open(ctx context.Context, key string) (store.Object, error) {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.dataPath(key), os.O_RDONLY|oNoFollow, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("file store %s: open %q: %w", s.root, key, store.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("file store %s: open %q: %v", s.root, key, err)
	}
	return &object{File: f, info: oi}, nil
}

type object struct {
	*os.File
	info store.ObjectInfo
}

func (o *object) Info() store.ObjectInfo { return o.info }

// keysUnder returns the keys under prefix after startAfter, sorted. It
// walks only the deepest directory the prefix names, and skips uploads in
// progress.
func (s *Store) keysUnder(ctx context.Context, prefix, startAfter string) ([]string, error) {
	base := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		base = prefix[:i]
	}
	var keys []string
	err := filepath.WalkDir(filepath.Join(s.dataDir(), filepath.FromSlash(base)), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(s.dataDir(), p)
		if err != nil {
			return err
		}
		if key := filepath.ToSlash(rel); strings.HasPrefix(key, prefix) && key > startAfter {
			keys = append(keys, key)
		}
		return nil
	})
	sort.Strings(keys)
	return keys, err
}

// List returns one page of keys under prefix in lexical order. It walks the
// directory holding the prefix and sorts, so a page costs time linear in the
// number of objects under that directory: fine for the thousands of objects
// a node keeps locally, not meant for millions.
func (s *Store) List(ctx context.Context, prefix, startAfter string, limit int) ([]store.ObjectInfo, string, error) {
	if err := store.ValidPrefix(prefix); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = defaultPageSize
	}
	keys, err := s.keysUnder(ctx, prefix, startAfter)
	if err != nil {
		return nil, "", fmt.Errorf("file store %s: list %q: %v", s.root, prefix, err)
	}
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = keys[limit-1]
	}
	out := make([]store.ObjectInfo, 0, len(keys))
	for _, k := range keys {
		st, err := os.Lstat(s.dataPath(k))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since the walk
		}
		if err != nil {
			return nil, "", fmt.Errorf("file store %s: list %q: %v", s.root, prefix, err)
		}
		oi, err := s.info(k, st)
		if err != nil {
			return nil, "", err
		}
		out = append(out, oi)
	}
	return out, next, nil
}

// Delete removes the object unless it is locked. The file store keeps no
// versions: a non-empty versionID is refused with ErrUnsupported.
func (s *Store) Delete(ctx context.Context, key, versionID string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if versionID != "" {
		return fmt.Errorf("file store %s: delete %q version %q: the file store keeps no versions: %w", s.root, key, versionID, store.ErrUnsupported)
	}
	if err := s.checkUnlocked(key, "delete"); err != nil {
		return err
	}
	dst := s.dataPath(key)
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("file store %s: delete %q: %v", s.root, key, err)
	}
	if err := os.Remove(s.metaPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("file store %s: delete metadata of %q: %v", s.root, key, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store %s: delete %q: %v", s.root, key, err)
	}
	return nil
}

// SetLegalHold places or lifts the legal hold of an existing object.
func (s *Store) SetLegalHold(ctx context.Context, key string, on bool) error {
	if _, err := s.Stat(ctx, key); err != nil {
		return err
	}
	m, err := s.readMeta(key)
	if err != nil {
		return err
	}
	m.LegalHold = on
	return s.writeMeta(key, m)
}

// AbortStaleUploads removes temporary files older than olderThan that
// interrupted Puts left behind.
func (s *Store) AbortStaleUploads(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := s.now().Add(-olderThan)
	n := 0
	for _, dir := range []string{s.dataDir(), s.metaDir()} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if !d.Type().IsRegular() || !strings.HasPrefix(d.Name(), tmpPrefix) {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return nil // removed meanwhile
			}
			if fi.ModTime().Before(cutoff) {
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("file store %s: clean up interrupted uploads: %v", s.root, err)
		}
	}
	return n, nil
}
