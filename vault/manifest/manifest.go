// Package manifest defines the manifest: the signed record of one vaulted
// checkpoint, and the layout of the objects that make up a vaulted
// checkpoint in the store.
//
// A manifest says what was vaulted (the SHA-256 and size of the plaintext
// archive and of its age ciphertext), for whom (the recipients'
// fingerprints), what it is (namespace, pod, container, node, engine,
// image, archive summary), when, by which tool, and under which object key.
// It is encoded canonically (one byte sequence per manifest), parsed
// strictly, and signed with crypto/signing. Because the signed bytes
// contain the object key, and the key is derived from the manifest's own
// fields, a manifest cannot be moved, copied or replayed under another name
// without verification failing.
//
// docs/FORMAT.md is the normative specification; this package implements
// it. The order of checks a verifier runs is: signature over the exact
// manifest bytes, strict parse (which includes canonical form and the key
// derivation), object key equals the key fetched, and then, while the
// ciphertext streams, its SHA-256 and size against the manifest.
package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// Format identifiers. Writers write FormatV2; readers accept both. The two
// differ only in the base key's short id (docs/FORMAT.md "Key components"):
// v1 derived it from the archive's metadata, v2 chooses it at random for
// every upload attempt.
const (
	FormatV1 = "ckvault.dev/manifest/v1"
	FormatV2 = "ckvault.dev/manifest/v2"
)

// knownFormat reports whether this build reads manifests of format f.
func knownFormat(f string) bool { return f == FormatV1 || f == FormatV2 }

// MaxSize bounds a manifest's encoding. Real manifests are a few KiB; the
// bound keeps a hostile object from exhausting memory before parsing.
const MaxSize = 1 << 20

// MaxSignatureSize bounds a .sig or .sigstore.json object, which readers
// read whole; real ones are a few hundred bytes and a few KiB.
const MaxSignatureSize = 64 << 10

// Limits on the archive summary and free-text fields.
const (
	maxFiles   = 1024
	maxTextLen = 1024
)

// Engines are the container engines whose archives ckvault understands.
var Engines = []string{"containerd", "cri-o"}

// Manifest is the record of one vaulted checkpoint. Field order here is
// the order of the canonical encoding.
type Manifest struct {
	// Format is FormatV2 (FormatV1 in manifests written before v2).
	Format string `json:"format"`
	// Object is the base key (see NewKey), relative to the store prefix.
	Object string `json:"object"`

	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
	Node      string `json:"node"`

	// CheckpointedAt is when the runtime took the checkpoint; VaultedAt
	// when the manifest was made.
	CheckpointedAt Time `json:"checkpointedAt"`
	VaultedAt      Time `json:"vaultedAt"`

	// OriginalName is the base name of the archive file on the node.
	OriginalName string `json:"originalName"`

	Plaintext  Digest `json:"plaintext"`
	Ciphertext Digest `json:"ciphertext"`

	// Recipients are the fingerprints (envelope.Fingerprint) of every
	// recipient the ciphertext is encrypted to, sorted, without duplicates.
	Recipients []string `json:"recipients"`

	Checkpoint Checkpoint `json:"checkpoint"`
	Archive    Archive    `json:"archive"`

	// ToolVersion is the version of ckvault that wrote the manifest.
	ToolVersion string `json:"toolVersion"`
}

// Digest is the SHA-256 (lowercase hex) and size in bytes of a byte stream.
type Digest struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Sum returns the digest as bytes. It assumes a validated manifest.
func (d Digest) Sum() ([32]byte, error) {
	var s [32]byte
	if len(d.SHA256) != 64 {
		return s, fmt.Errorf("sha256 %q is not 64 hex digits", d.SHA256)
	}
	if _, err := hex.Decode(s[:], []byte(d.SHA256)); err != nil {
		return s, fmt.Errorf("sha256 %q is not hex: %v", d.SHA256, err)
	}
	return s, nil
}

// NewDigest makes a Digest from a sum and a size.
func NewDigest(sum [32]byte, size int64) Digest {
	return Digest{SHA256: hex.EncodeToString(sum[:]), Size: size}
}

// Checkpoint is what the runtime recorded about the container
// (config.dump / spec.dump).
type Checkpoint struct {
	// Engine is "cri-o" or "containerd".
	Engine string `json:"engine"`
	// Runtime is the OCI runtime (e.g. "runc", "crun"); may be empty.
	Runtime     string `json:"runtime"`
	ContainerID string `json:"containerID"`
	// Image is the image name and ImageRef its resolved reference; either
	// may be empty if the archive does not say.
	Image    string `json:"image"`
	ImageRef string `json:"imageRef"`
	// CreatedAt is when the container was created; may be zero.
	CreatedAt Time `json:"createdAt"`
}

// Archive summarises the tar members of the plaintext archive.
type Archive struct {
	// Members is the number of tar members.
	Members int64 `json:"members"`
	// CheckpointSize is the total size of the members under checkpoint/
	// (the CRIU images), MemoryPagesSize that of its pages-*.img members.
	CheckpointSize  int64 `json:"checkpointSize"`
	MemoryPagesSize int64 `json:"memoryPagesSize"`
	// RootfsDiffSize is the size of rootfs-diff.tar, 0 if absent.
	RootfsDiffSize int64 `json:"rootfsDiffSize"`
	// Files lists the members outside checkpoint/ (config.dump, spec.dump,
	// ...), sorted by name, names without a leading "./".
	Files []File `json:"files"`
}

// File is one archive member.
type File struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Time is a timestamp encoded as RFC 3339 in UTC with "Z" and only as many
// fractional-second digits as needed (time.RFC3339Nano), or "" when zero.
type Time struct{ time.Time }

// MarshalJSON implements the canonical time encoding.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte(`""`), nil
	}
	u := t.UTC()
	if y := u.Year(); y < 1 || y > 9999 {
		return nil, fmt.Errorf("time %v out of range", u)
	}
	return json.Marshal(u.Format(time.RFC3339Nano))
}

// UnmarshalJSON accepts only the canonical encoding.
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("time is not a JSON string")
	}
	if s == "" {
		t.Time = time.Time{}
		return nil
	}
	if !strings.HasSuffix(s, "Z") {
		return fmt.Errorf("time %q is not in UTC (must end in Z)", s)
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("time %q is not RFC 3339: %v", s, err)
	}
	if v.Format(time.RFC3339Nano) != s {
		return fmt.Errorf("time %q is not in canonical form %q", s, v.Format(time.RFC3339Nano))
	}
	t.Time = v
	return nil
}

// KeyInput returns the inputs of the manifest's base key.
func (m *Manifest) KeyInput() KeyInput {
	return KeyInput{
		Namespace: m.Namespace, Pod: m.Pod, Container: m.Container, Node: m.Node,
		CheckpointedAt: m.CheckpointedAt.Time, ContainerID: m.Checkpoint.ContainerID,
		OriginalName: m.OriginalName, Size: m.Plaintext.Size,
	}
}

// Objects names the manifest's objects.
func (m *Manifest) Objects() Objects { return ObjectsFor(m.Object) }

// Marshal returns the canonical encoding (docs/FORMAT.md "Canonical
// encoding"): UTF-8 JSON, fields in the order of the Manifest type, every
// field always present, two-space indentation, no HTML escaping, times as
// Time documents, Recipients and Archive.Files sorted, and one trailing
// newline. It validates m first, so it never produces a manifest that
// Parse rejects. m is not modified.
func (m *Manifest) Marshal() ([]byte, error) {
	c := *m
	c.Recipients = slices.Clone(m.Recipients)
	slices.Sort(c.Recipients)
	c.Archive.Files = slices.Clone(m.Archive.Files)
	slices.SortFunc(c.Archive.Files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c.encode()
}

func (m *Manifest) encode() ([]byte, error) {
	// An empty list is always "[]", never "null": one encoding per value.
	if m.Archive.Files == nil {
		c := *m
		c.Archive.Files = []File{}
		m = &c
	}
	if m.Recipients == nil {
		c := *m
		c.Recipients = []string{}
		m = &c
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("encoding manifest %s: %w", m.Object, err)
	}
	return buf.Bytes(), nil
}

// Sealing is what one pass over an archive established: everything a
// manifest records apart from its own format.
type Sealing struct {
	// Object is the base key the objects are stored under (NewKey).
	Object       string
	Node         string
	OriginalName string
	// Info is what the archive says about itself (identity, engine,
	// metadata, members), read while it was sealed.
	Info *checkpoint.Info
	// CheckpointedAt is Info.Checkpointed, or the file name's time when the
	// archive does not say.
	CheckpointedAt        time.Time
	Plaintext, Ciphertext Digest
	// Recipients are the recipients' fingerprints, in any order.
	Recipients  []string
	VaultedAt   time.Time
	ToolVersion string
}

// New builds the manifest of a sealed archive, in the current format, and
// validates it. It is the one place a manifest is assembled: the daemon and
// the test helpers both call it.
func New(s Sealing) (*Manifest, error) {
	info := s.Info
	m := &Manifest{
		Format: FormatV2, Object: s.Object,
		Namespace: info.Identity.Namespace, Pod: info.Identity.Pod, Container: info.Identity.Container,
		Node:           s.Node,
		CheckpointedAt: Time{Time: s.CheckpointedAt.UTC()},
		VaultedAt:      Time{Time: s.VaultedAt.UTC()},
		OriginalName:   s.OriginalName,
		Plaintext:      s.Plaintext,
		Ciphertext:     s.Ciphertext,
		Recipients:     slices.Sorted(slices.Values(s.Recipients)),
		Checkpoint: Checkpoint{Engine: info.Engine, Runtime: info.Runtime, ContainerID: info.ContainerID,
			Image: info.Image, ImageRef: info.ImageRef},
		Archive:     ArchiveOf(info),
		ToolVersion: s.ToolVersion,
	}
	if !info.Created.IsZero() {
		m.Checkpoint.CreatedAt = Time{Time: info.Created.UTC()}
	}
	m.Recipients = slices.Compact(m.Recipients)
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Errors from Parse and Verify; test with errors.Is.
var (
	// ErrMalformed: not a manifest (bad JSON, unknown or duplicate field,
	// trailing data, too large, not canonical).
	ErrMalformed = errors.New("malformed manifest")
	// ErrInvalid: a well-formed manifest with a field that breaks a rule.
	ErrInvalid = errors.New("invalid manifest")
	// ErrUnsupportedFormat: a manifest of a format version this build does
	// not know.
	ErrUnsupportedFormat = errors.New("unsupported manifest format")
)

// Parse decodes a manifest strictly: at most MaxSize bytes; unknown fields,
// trailing data and anything but the canonical encoding (which also rules
// out duplicate keys, differently-cased keys, other whitespace and unsorted
// lists) are rejected with ErrMalformed; a format other than FormatV1 with
// ErrUnsupportedFormat; a field that breaks a rule of Validate with
// ErrInvalid.
//
// Parse does not check a signature: call Verify for bytes from a store.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrMalformed, len(b), MaxSize)
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrMalformed)
	}
	// Read the format first, so that a future version gets a precise error
	// rather than "unknown field".
	var probe struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !knownFormat(probe.Format) {
		return nil, fmt.Errorf("%w %q: this ckvault reads %q and %q; use a ckvault release that supports it", ErrUnsupportedFormat, probe.Format, FormatV1, FormatV2)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the manifest object", ErrMalformed)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	canon, err := m.encode()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !bytes.Equal(canon, b) {
		return nil, fmt.Errorf("%w: not in canonical encoding (%s)", ErrMalformed, firstDifference(canon, b))
	}
	return &m, nil
}

// firstDifference describes where b departs from canon, for errors.
func firstDifference(canon, b []byte) string {
	n := min(len(canon), len(b))
	for i := range n {
		if canon[i] != b[i] {
			line := bytes.Count(canon[:i], []byte("\n")) + 1
			return fmt.Sprintf("first difference at byte %d, line %d; duplicate, reordered or re-cased keys, other whitespace or escaping, or unsorted lists", i, line)
		}
	}
	return fmt.Sprintf("length %d, canonical length %d", len(b), len(canon))
}

// Validate checks every rule of docs/FORMAT.md "Fields" that does not
// depend on the encoding, including that Object is the key derived from
// the manifest's fields. Errors wrap ErrInvalid (or ErrUnsupportedFormat).
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	if !knownFormat(m.Format) {
		return fmt.Errorf("%w %q: want %q", ErrUnsupportedFormat, m.Format, FormatV2)
	}
	if m.CheckpointedAt.IsZero() {
		return bad("checkpointedAt is missing")
	}
	if m.VaultedAt.IsZero() {
		return bad("vaultedAt is missing")
	}
	if err := checkKey(m.Format, m.Object, m.KeyInput()); err != nil {
		return bad("%v", err)
	}
	if err := checkText("originalName", m.OriginalName, 255, true); err != nil {
		return bad("%v", err)
	}
	if strings.ContainsAny(m.OriginalName, "/\\") || m.OriginalName == "." || m.OriginalName == ".." {
		return bad("originalName %q must be a base name", m.OriginalName)
	}
	if err := m.Plaintext.validate("plaintext"); err != nil {
		return bad("%v", err)
	}
	if err := m.Ciphertext.validate("ciphertext"); err != nil {
		return bad("%v", err)
	}
	// An age file is a header plus the STREAM payload, whose size is exact;
	// the header is at least a few dozen bytes, so the ciphertext is always
	// larger than the payload.
	if min := envelope.PayloadSize(m.Plaintext.Size); m.Ciphertext.Size <= min {
		return bad("ciphertext size %d is too small for a %d-byte plaintext (payload alone is %d bytes)", m.Ciphertext.Size, m.Plaintext.Size, min)
	}
	if len(m.Recipients) == 0 {
		return bad("recipients is empty")
	}
	for i, r := range m.Recipients {
		if !validFingerprint(r) {
			return bad("recipient %q is not a recipient fingerprint (%s followed by 16 base32 characters)", r, envelope.FingerprintPrefix)
		}
		if i > 0 && m.Recipients[i-1] >= r {
			return bad("recipients are not sorted and unique at %q", r)
		}
	}
	if err := m.Checkpoint.validate(); err != nil {
		return bad("%v", err)
	}
	if err := m.Archive.validate(m.Plaintext.Size); err != nil {
		return bad("%v", err)
	}
	if err := checkText("toolVersion", m.ToolVersion, 128, true); err != nil {
		return bad("%v", err)
	}
	return nil
}

func (d Digest) validate(what string) error {
	if len(d.SHA256) != 64 || strings.ToLower(d.SHA256) != d.SHA256 {
		return fmt.Errorf("%s.sha256 %q is not 64 lowercase hex digits", what, d.SHA256)
	}
	if _, err := hex.DecodeString(d.SHA256); err != nil {
		return fmt.Errorf("%s.sha256 %q is not hex", what, d.SHA256)
	}
	if d.Size < 0 {
		return fmt.Errorf("%s.size %d is negative", what, d.Size)
	}
	return nil
}

func validFingerprint(s string) bool {
	rest, ok := strings.CutPrefix(s, envelope.FingerprintPrefix)
	if !ok || len(rest) != 16 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func (c Checkpoint) validate() error {
	if !slices.Contains(Engines, c.Engine) {
		return fmt.Errorf("checkpoint.engine %q is not one of %v", c.Engine, Engines)
	}
	for _, f := range []struct {
		name, v  string
		required bool
	}{
		{"checkpoint.runtime", c.Runtime, false},
		{"checkpoint.containerID", c.ContainerID, true},
		{"checkpoint.image", c.Image, false},
		{"checkpoint.imageRef", c.ImageRef, false},
	} {
		if err := checkText(f.name, f.v, maxTextLen, f.required); err != nil {
			return err
		}
	}
	return nil
}

func (a Archive) validate(plaintextSize int64) error {
	if a.Members < 0 || a.CheckpointSize < 0 || a.MemoryPagesSize < 0 || a.RootfsDiffSize < 0 {
		return errors.New("archive sizes and counts must not be negative")
	}
	if a.MemoryPagesSize > a.CheckpointSize {
		return fmt.Errorf("archive.memoryPagesSize %d exceeds checkpointSize %d", a.MemoryPagesSize, a.CheckpointSize)
	}
	if a.CheckpointSize > plaintextSize || a.RootfsDiffSize > plaintextSize {
		return fmt.Errorf("archive member sizes exceed the plaintext size %d", plaintextSize)
	}
	if len(a.Files) > maxFiles {
		return fmt.Errorf("archive.files has %d entries, more than %d", len(a.Files), maxFiles)
	}
	if int64(len(a.Files)) > a.Members {
		return fmt.Errorf("archive.files has %d entries but members is %d", len(a.Files), a.Members)
	}
	for i, f := range a.Files {
		if err := checkText("archive.files name", f.Name, 255, true); err != nil {
			return err
		}
		if f.Size < 0 || f.Size > plaintextSize {
			return fmt.Errorf("archive.files %q has size %d outside [0, %d]", f.Name, f.Size, plaintextSize)
		}
		if i > 0 && a.Files[i-1].Name >= f.Name {
			return fmt.Errorf("archive.files are not sorted and unique at %q", f.Name)
		}
	}
	return nil
}

// checkText allows printable UTF-8 of at most maxLen bytes: no control
// characters (C0, DEL, C1), which could forge lines in a terminal or log.
func checkText(name, s string, maxLen int, required bool) error {
	if required && s == "" {
		return fmt.Errorf("%s is empty", name)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%s is longer than %d bytes", name, maxLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not UTF-8", name)
	}
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r < 0xa0 || r == 0x2028 || r == 0x2029 {
			return fmt.Errorf("%s contains control character %U", name, r)
		}
	}
	return nil
}
