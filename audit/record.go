package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// Outcome is how an audited action ended.
type Outcome string

// The outcomes a record may carry.
const (
	OK     Outcome = "ok"     // the action happened
	Denied Outcome = "denied" // policy refused it
	Error  Outcome = "error"  // it was attempted and failed
)

func (o Outcome) valid() bool { return o == OK || o == Denied || o == Error }

// Limits on one record. They keep a record small enough to stay in one bbolt
// page run and stop a caller from pouring content into the trail.
const (
	MaxFieldLen   = 1024 // bytes of any one string field or detail value
	MaxDetailKeys = 32
)

// Record is one entry of the audit trail.
//
// # What a record may hold
//
// A record says who did what to which checkpoint, when, and how it ended. It
// MUST NOT hold secret material or checkpoint content, ever: no key, no
// password, no token, no plaintext or ciphertext byte, no environment or
// memory excerpt. Detail holds sizes, digests (hex SHA-256), object keys,
// counts and error text; an error text must itself be free of secrets (the
// project's errors never carry them). Everything in a record is exported to
// the object store in clear and readable by every auditor.
//
// Seq, Time, Node, Prev and Hash are set by Log.Append; what a caller puts
// there is ignored.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Node string    `json:"node"`
	// Actor is who caused the action: "daemon", "uid:0", a client identity.
	Actor string `json:"actor"`
	// Action is what happened: detected, admitted, rejected, sealed,
	// uploaded, proven, shredded, failed, listed, fetched, verified, denied,
	// started, stopped, config-loaded, exported, ...
	Action string `json:"action"`
	// Subject is what it happened to: an archive path, an object key, a
	// vault id.
	Subject   string  `json:"subject"`
	Namespace string  `json:"namespace,omitempty"`
	Pod       string  `json:"pod,omitempty"`
	Container string  `json:"container,omitempty"`
	Outcome   Outcome `json:"outcome"`
	// Detail holds sizes, digests and error text (see above: never secrets).
	Detail map[string]string `json:"detail,omitempty"`

	// Prev is the hash of record Seq-1 (zero for record 1); Hash is this
	// record's hash over its canonical encoding, Prev included.
	Prev Digest `json:"prev"`
	Hash Digest `json:"hash"`
}

// Digest is a SHA-256 value, hex in JSON.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes d as lower-case hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes 64 hex digits.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("digest must be 64 hex digits, got %d characters", len(b))
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// encodingVersion is the first byte of every encoded record.
const encodingVersion = 1

// recordHashPrefix separates record hashes from every other SHA-256 use.
const recordHashPrefix = "ckvault audit record v1\n"

// errNonCanonical is returned for bytes that decode but are not the one
// canonical encoding of the record they describe.
var errNonCanonical = errors.New("record encoding is not canonical")

// validate checks the fields a caller controls.
func (r *Record) validate() error {
	if r.Action == "" {
		return errors.New("record has no action")
	}
	if !r.Outcome.valid() {
		return fmt.Errorf("record outcome %q is not ok, denied or error", r.Outcome)
	}
	for _, f := range []struct{ name, v string }{
		{"node", r.Node}, {"actor", r.Actor}, {"action", r.Action}, {"subject", r.Subject},
		{"namespace", r.Namespace}, {"pod", r.Pod}, {"container", r.Container},
	} {
		if err := checkField(f.name, f.v); err != nil {
			return err
		}
	}
	if len(r.Detail) > MaxDetailKeys {
		return fmt.Errorf("record detail has %d keys, at most %d allowed", len(r.Detail), MaxDetailKeys)
	}
	for k, v := range r.Detail {
		if k == "" {
			return errors.New("record detail has an empty key")
		}
		if err := checkField("detail key", k); err != nil {
			return err
		}
		if err := checkField("detail "+k, v); err != nil {
			return err
		}
	}
	return nil
}

// CheckIdentity holds a new record's identity to the Kubernetes name rules
// the rest of checkpoint-vault applies (internal/k8sname); an empty field
// means "none". The trail is indexed and queried by these fields, and an
// identity that could not name an object has no business in it as if it
// did. Append applies it, and so does the local socket before it forwards
// a client's record. Records already written (and exported) are not held
// to it: they stay readable and verifiable under the rules they were
// written with (which let a node name have upper case and '_'; a log's
// node is checked when it is opened for writing).
func CheckIdentity(namespace, pod, container string) error {
	for _, f := range []struct {
		kind k8sname.Kind
		v    string
	}{{k8sname.Namespace, namespace}, {k8sname.Pod, pod}, {k8sname.Container, container}} {
		if f.v == "" {
			continue
		}
		if err := f.kind.Check(f.v); err != nil {
			return fmt.Errorf("record %s: %w", f.kind, err)
		}
	}
	return nil
}

func checkField(name, v string) error {
	if len(v) > MaxFieldLen {
		return fmt.Errorf("record %s is %d bytes, at most %d allowed", name, len(v), MaxFieldLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("record %s is not valid UTF-8", name)
	}
	return nil
}

// encodeBody appends the canonical encoding of everything but Hash:
//
//	version byte (1)
//	uvarint seq
//	8-byte big-endian Unix nanoseconds (UTC)
//	node, actor, action, subject, namespace, pod, container, outcome:
//	    each uvarint length + UTF-8 bytes
//	uvarint number of detail entries, then key, value (as above) in
//	    ascending byte order of keys, no duplicates
//	32-byte prev hash
func (r *Record) encodeBody(b []byte) []byte {
	b = append(b, encodingVersion)
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	for _, s := range []string{r.Node, r.Actor, r.Action, r.Subject, r.Namespace, r.Pod, r.Container, string(r.Outcome)} {
		b = appendString(b, s)
	}
	keys := make([]string, 0, len(r.Detail))
	for k := range r.Detail {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, r.Detail[k])
	}
	return append(b, r.Prev[:]...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// computeHash returns the hash r must carry given its other fields.
func (r *Record) computeHash() Digest {
	h := sha256.New()
	h.Write([]byte(recordHashPrefix))
	h.Write(r.encodeBody(make([]byte, 0, 256)))
	var d Digest
	h.Sum(d[:0])
	return d
}

// MarshalBinary returns the canonical encoding of r: the body described at
// encodeBody followed by the 32-byte Hash. It is what the database stores.
func (r *Record) MarshalBinary() ([]byte, error) {
	b := r.encodeBody(make([]byte, 0, 256))
	return append(b, r.Hash[:]...), nil
}

// DecodeRecord parses a canonical encoding. It rejects malformed,
// non-canonical (re-encoding would differ) and oversized input, but does not
// check the stored hash: Verify does.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != encodingVersion {
		return r, fmt.Errorf("unknown record encoding version %d", v)
	}
	r.Seq = d.uvarint()
	r.Time = time.Unix(0, int64(d.uint64())).UTC()
	fields := []*string{&r.Node, &r.Actor, &r.Action, &r.Subject, &r.Namespace, &r.Pod, &r.Container}
	for _, f := range fields {
		*f = d.string()
	}
	r.Outcome = Outcome(d.string())
	n := d.uvarint()
	if n > MaxDetailKeys {
		return r, fmt.Errorf("record has %d detail keys, at most %d allowed", n, MaxDetailKeys)
	}
	if n > 0 && d.err == nil {
		r.Detail = make(map[string]string, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			k := d.string()
			if _, dup := r.Detail[k]; dup {
				return r, errNonCanonical
			}
			r.Detail[k] = d.string()
		}
	}
	copy(r.Prev[:], d.bytes(32))
	copy(r.Hash[:], d.bytes(32))
	if d.err != nil {
		return r, fmt.Errorf("decoding record: %w", d.err)
	}
	if len(d.b) != 0 {
		return r, fmt.Errorf("decoding record: %d trailing bytes", len(d.b))
	}
	if err := r.validate(); err != nil {
		return r, err
	}
	// One record, one encoding: anything else (unsorted keys, long varints)
	// would let two byte strings carry the same meaning.
	if re, _ := r.MarshalBinary(); string(re) != string(b) {
		return r, errNonCanonical
	}
	return r, nil
}

type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("record is truncated")

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errors.New("bad varint"))
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint64() uint64 {
	b := d.bytes(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err == nil && n > MaxFieldLen {
		d.fail(fmt.Errorf("field of %d bytes exceeds %d", n, MaxFieldLen))
	}
	return string(d.bytes(int(n)))
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}
