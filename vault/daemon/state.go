package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// StateFileName is the progress database inside the state directory. It is
// separate from the audit database: the audit log is append-only and
// exported, progress is mutable bookkeeping that may be pruned.
const StateFileName = "state.db"

// Stage is where one archive version is in the pipeline. The values are
// stable: they are stored, shown by the status endpoint and used as labels.
//
//	(new) -> sealing -> sealed -> uploaded -> proven -> shredding -> shredded
//	                                             \-> pinned (until the .keep pin goes)
//	(new) -> rejected | skipped
//
// sealing: the attempt's object key is chosen and its ciphertext is being
// (or was partly) uploaded; a restart abandons the attempt (its objects are
// withdrawn or recorded as orphans) and starts again under a new key.
// sealed: the ciphertext is stored and proven by Put, and the unsigned
// manifest is recorded; a restart signs (once) and publishes it without
// reading the archive again. uploaded: every object is stored and proven by
// Put; a restart re-proves with Stat. proven: the "proven" audit record is
// durable; from here on the local copy may be destroyed. shredding:
// destruction started.
type Stage string

const (
	StageSealing   Stage = "sealing"
	StageSealed    Stage = "sealed"
	StageUploaded  Stage = "uploaded"
	StageProven    Stage = "proven"
	StagePinned    Stage = "pinned"
	StageShredding Stage = "shredding"
	StageShredded  Stage = "shredded"
	StageRejected  Stage = "rejected"
	StageSkipped   Stage = "skipped"
)

// Terminal reports whether nothing more will happen to this version.
func (s Stage) Terminal() bool {
	return s == StageShredded || s == StageRejected || s == StageSkipped
}

// Progress is the stored state of one archive version: a file name with one
// inode, size, mtime and ctime. A new version (the runtime rewrote the name
// in place, or the inode was reused) is a new key and starts afresh.
type Progress struct {
	Name  string `json:"name"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime"` // Unix nanoseconds
	Ctime int64  `json:"ctime"`

	Stage   Stage     `json:"stage"`
	Updated time.Time `json:"updated"`
	// Object is the base key of the vaulted objects (set from sealing on).
	Object    string `json:"object,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	// Manifest is the unsigned canonical manifest (from sealed on) and
	// Signed its signatures once made: a retry publishes exactly these
	// bytes, which a create-only store accepts as its own earlier upload.
	Manifest []byte           `json:"manifest,omitempty"`
	Signed   *manifest.Signed `json:"signed,omitempty"`
	// CiphertextChecksum and CiphertextVersion are what the store reported
	// for the ciphertext's Put, for the "uploaded" record.
	CiphertextChecksum string `json:"ciphertextChecksum,omitempty"`
	CiphertextVersion  string `json:"ciphertextVersion,omitempty"`
	// CiphertextSize and ManifestSize let a restart re-prove an uploaded
	// archive with Stat alone.
	CiphertextSize   int64  `json:"ciphertextSize,omitempty"`
	ManifestSize     int64  `json:"manifestSize,omitempty"`
	PlaintextSHA256  string `json:"plaintextSHA256,omitempty"`
	CiphertextSHA256 string `json:"ciphertextSHA256,omitempty"`
	// Reason is why a version was rejected or skipped.
	Reason string `json:"reason,omitempty"`
}

// Snapshot returns the file state the progress was recorded for.
func (p *Progress) Snapshot() admit.Snapshot {
	return admit.Snapshot{Dev: p.Dev, Ino: p.Ino, Size: p.Size,
		Mtime: time.Unix(0, p.Mtime), Ctime: time.Unix(0, p.Ctime), Nlink: 1}
}

func newProgress(name string, s admit.Snapshot) *Progress {
	return &Progress{Name: name, Dev: s.Dev, Ino: s.Ino, Size: s.Size,
		Mtime: s.Mtime.UnixNano(), Ctime: s.Ctime.UnixNano()}
}

// versionKey identifies one version of a name. ctime is part of it so that a
// link-count change (a hard link added or removed) makes a new version, which
// is re-examined rather than staying rejected.
func versionKey(name string, s admit.Snapshot) []byte {
	b := make([]byte, 0, len(name)+64)
	b = append(b, name...)
	b = append(b, 0)
	b = strconv.AppendUint(b, s.Dev, 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, s.Ino, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, s.Size, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, s.Mtime.UnixNano(), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, s.Ctime.UnixNano(), 10)
	return b
}

var bucketProgress = []byte("progress")

// stateDB is the bbolt progress database. Every Put is one fsync'd
// transaction: a stage is recorded before the step that depends on it.
type stateDB struct {
	db *bolt.DB
}

func openState(stateDir string) (*stateDB, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory %s: %w", stateDir, err)
	}
	path := filepath.Join(stateDir, StateFileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("opening %s: another ckvault daemon holds it; stop it first", path)
		}
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("restricting %s to 0600: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketProgress)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising state database %s: %w", path, err)
	}
	return &stateDB{db: db}, nil
}

func (s *stateDB) Close() error { return s.db.Close() }

// Get returns the progress of one version, or nil.
func (s *stateDB) Get(name string, snap admit.Snapshot) (*Progress, error) {
	var p *Progress
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketProgress).Get(versionKey(name, snap))
		if v == nil {
			return nil
		}
		p = new(Progress)
		return json.Unmarshal(v, p)
	})
	if err != nil {
		return nil, fmt.Errorf("reading progress of %s: %w", name, err)
	}
	return p, nil
}

// Put records p durably (bbolt fsyncs on commit).
func (s *stateDB) Put(p *Progress) error {
	p.Updated = time.Now().UTC()
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProgress).Put(versionKey(p.Name, p.Snapshot()), v)
	})
	if err != nil {
		return fmt.Errorf("recording %s as %s in the state database: %w", p.Name, p.Stage, err)
	}
	return nil
}

// Delete forgets p's version, so that its next attempt starts afresh.
func (s *stateDB) Delete(p *Progress) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProgress).Delete(versionKey(p.Name, p.Snapshot()))
	})
	if err != nil {
		return fmt.Errorf("clearing %s in the state database: %w", p.Name, err)
	}
	return nil
}

// All returns every stored version (for status and tests).
func (s *stateDB) All() ([]Progress, error) {
	var out []Progress
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProgress).ForEach(func(_, v []byte) error {
			var p Progress
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// Prune removes terminal versions last updated before cutoff, so the
// database does not grow with every archive ever seen.
func (s *stateDB) Prune(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketProgress).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var p Progress
			if json.Unmarshal(v, &p) != nil {
				continue
			}
			if p.Stage.Terminal() && p.Updated.Before(cutoff) {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}

// Writable proves the database accepts a write (for /readyz).
func (s *stateDB) Writable() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("health"))
		if err != nil {
			return err
		}
		return b.Put([]byte("probe"), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
	})
}
