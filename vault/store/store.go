// Package store defines the vault's off-node home: an object store holding
// sealed checkpoints, their manifests and signatures, and exported audit
// segments.
//
// The interface is owned by its consumers (the daemon's pipeline, the
// responder commands and the audit exporter); implementations live in
// sub-packages (s3store for S3-compatible servers, filestore for file://
// directories) and all pass the one conformance suite in storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Sentinel errors. Implementations wrap them (errors.Is works) and add the
// object key, endpoint and cause.
var (
	// ErrNotExist: the object (or version) does not exist.
	ErrNotExist = errors.New("object does not exist")
	// ErrLocked: a retention period or legal hold forbids deleting or
	// overwriting the object. Permanent until the lock expires.
	ErrLocked = errors.New("object is locked by retention or legal hold")
	// ErrIncomplete: the server's copy is not what was sent (size or
	// checksum differ). The object must not be treated as stored.
	ErrIncomplete = errors.New("stored object does not match what was sent")
	// ErrPermanent marks failures that retrying cannot fix: bad
	// credentials, an untrusted certificate, a missing bucket, access denied,
	// a bucket without the Object Lock the config requires.
	ErrPermanent = errors.New("permanent store error")
	// ErrUnsupported: the backend cannot do what was asked (for example
	// legal hold on a bucket without Object Lock).
	ErrUnsupported = errors.New("not supported by this store")
	// ErrExists: a Put with PutOptions.IfAbsent found the key already
	// holding an object. Nothing was replaced.
	ErrExists = errors.New("object already exists")
)

// Checksum is a full-object checksum computed by both sides of an upload.
type Checksum struct {
	// Algorithm names the checksum, e.g. "CRC64NVME" or "SHA256".
	Algorithm string
	// Value is the checksum in the form the algorithm's S3 header uses
	// (base64 of the big-endian bytes).
	Value string
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key          string
	Size         int64
	LastModified time.Time
	// VersionID is set where the backend versions objects.
	VersionID string
	// Checksum is the full-object checksum the store verified at upload
	// time (Put), or the one the server reports (Stat), when available.
	Checksum Checksum
	// RetainUntil and LegalHold report Object Lock state when known.
	RetainUntil time.Time
	LegalHold   bool
}

// Retention is the write-once policy applied to a new object.
type Retention struct {
	// Mode is "compliance" or "governance"; empty means no retention.
	Mode string
	// Until is the retain-until date.
	Until time.Time
	// LegalHold additionally places a legal hold.
	LegalHold bool
}

// Validate reports a retention that no backend can apply: a retain-until
// without a mode, a mode without a date, or an unknown mode.
func (r Retention) Validate() error {
	switch r.Mode {
	case "":
		if !r.Until.IsZero() {
			return errors.New("retain-until given without a retention mode")
		}
	case "compliance", "governance":
		if r.Until.IsZero() {
			return fmt.Errorf("%s retention without a retain-until date", r.Mode)
		}
	default:
		return fmt.Errorf("unknown retention mode %q (want compliance or governance)", r.Mode)
	}
	return nil
}

// PutOptions tune one Put.
type PutOptions struct {
	ContentType string
	Retention   Retention
	// IfAbsent makes Put create-only: if key already has a current
	// version, Put fails with ErrExists and replaces nothing. The daemon
	// writes every object of a checkpoint this way, so a bug or a
	// collision can never overwrite another archive's object; a caller
	// that retries its own Put checks whether the existing object is the
	// one it meant to write.
	IfAbsent bool
}

// Object is an open stored object: it streams (Read) and allows random
// access (ReadAt, Seek). Close releases the connection.
type Object interface {
	io.ReadSeekCloser
	io.ReaderAt
	// Info reports the object's metadata as of opening.
	Info() ObjectInfo
}

// Reader is the read-only part of a Store: what responders, auditors and
// the vault service's index read through. Besides every Store, the vault
// service's HTTP client (package remote) implements it, so the same
// verifying code runs on a laptop that holds no store credentials.
type Reader interface {
	// Stat, Open, List and Describe are as in Store.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	Open(ctx context.Context, key string) (Object, error)
	List(ctx context.Context, prefix, startAfter string, limit int) (objs []ObjectInfo, next string, err error)
	Describe() string
}

// Store is an object store. Keys are relative to the store's configured
// prefix, use "/" separators, and never start with "/" or contain ".."
// segments; implementations reject such keys with an error.
//
// All methods are safe for concurrent use.
type Store interface {
	// Put stores exactly size bytes read from r under key and returns only
	// once the store has proven the copy complete: the server reports the
	// same size and the same full-object checksum as was computed locally
	// over the bytes sent. A mismatch returns an error wrapping
	// ErrIncomplete and the object does not count as stored. A reader that
	// yields more or fewer than size bytes is an error.
	//
	// Without IfAbsent, Put is idempotent: putting the same bytes under the
	// same key again succeeds (a versioned bucket keeps one more version);
	// with IfAbsent an existing object fails it with ErrExists. Overwriting
	// a locked object fails with ErrLocked. A failed or interrupted Put never
	// leaves an object visible as complete under key.
	Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) (ObjectInfo, error)

	// Stat returns the metadata of key, or an error wrapping ErrNotExist.
	// Idempotent.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// Open opens key for reading, or returns an error wrapping ErrNotExist.
	Open(ctx context.Context, key string) (Object, error)

	// List returns up to limit objects whose keys start with prefix and sort
	// strictly after startAfter, in lexical key order, and the key to pass
	// as startAfter for the next page ("" when there are no more).
	// limit <= 0 means an implementation-chosen page size. Idempotent.
	List(ctx context.Context, prefix, startAfter string, limit int) (objs []ObjectInfo, next string, err error)

	// Delete removes key (versionID "" means the current version; on a
	// versioned bucket that leaves a delete marker). Deleting a missing
	// object succeeds (idempotent). A locked object fails with ErrLocked.
	Delete(ctx context.Context, key, versionID string) error

	// SetLegalHold places or lifts a legal hold on key, or returns
	// ErrUnsupported where the backend has no Object Lock.
	SetLegalHold(ctx context.Context, key string, on bool) error

	// Describe names the store for logs and errors (scheme, endpoint,
	// bucket and prefix) and never includes credentials.
	Describe() string
}

// Checker is implemented by stores that can verify, before any work is
// done, that they are usable as configured: reachable, trusted,
// authenticated, the bucket present, and Object Lock and versioning enabled
// where the configuration asks for retention. The daemon calls Check at
// start-up so a misconfiguration fails at once with an error wrapping
// ErrPermanent instead of at the first upload.
type Checker interface {
	Check(ctx context.Context) error
}

// Janitor is implemented by stores that an interrupted Put can leave debris
// in: abandoned S3 multipart uploads (invisible as objects but billed as
// storage) or temporary files. AbortStaleUploads removes debris under the
// store's prefix older than olderThan and reports how many it removed. It
// never touches complete objects, and it is idempotent. olderThan should
// exceed the longest upload the caller expects to be running concurrently:
// debris is indistinguishable from an upload still in flight.
type Janitor interface {
	AbortStaleUploads(ctx context.Context, olderThan time.Duration) (int, error)
}

// ChecksumCRC64NVME names the full-object CRC-64/NVME checksum (the
// algorithm S3 computes as a full-object checksum even for multipart
// uploads); Checksum.Value is base64 of its 8 big-endian bytes.
const ChecksumCRC64NVME = "CRC64NVME"

// TooLargeError is ReadSmall's refusal: the object under Key is larger
// than the Max bytes its reader accepts for its kind. For a manifest, a
// signature or an intent that is what the object is, not a store fault:
// callers report it against the object rather than retry.
type TooLargeError struct {
	Key string
	Max int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than the %d bytes allowed", e.Key, e.Max)
}

// ReadSmall reads the object under key whole, refusing one of more than
// max bytes with a *TooLargeError after reading at most max+1: a hostile
// object cannot make its reader hold more than that.
func ReadSmall(ctx context.Context, st Reader, key string, max int64) ([]byte, error) {
	o, err := st.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	b, err := io.ReadAll(io.LimitReader(o, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if int64(len(b)) > max {
		return nil, &TooLargeError{Key: key, Max: max}
	}
	return b, nil
}
