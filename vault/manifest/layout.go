package manifest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// Object name suffixes, appended to a base key. docs/FORMAT.md "Object
// layout" is the normative list.
const (
	SuffixCiphertext       = ".tar.age"                // the age-encrypted archive
	SuffixCiphertextSig    = ".sig"                    // signature of the ciphertext (cosign .sig)
	SuffixCiphertextBundle = ".sigstore.json"          // signature of the ciphertext (sigstore bundle)
	SuffixManifest         = ".manifest.json"          // the manifest
	SuffixManifestSig      = ".manifest.sig"           // signature of the manifest (cosign .sig)
	SuffixManifestBundle   = ".manifest.sigstore.json" // signature of the manifest (sigstore bundle)
)

// compactTime is the layout of the time in a base key: UTC to the second.
const compactTime = "20060102T150405Z"

// Short id lengths: v1 keys derive 12 hex digits from the archive's
// metadata; v2 keys carry 16 random hex digits (64 bits) chosen afresh for
// every upload attempt.
const (
	shortIDLenV1 = 12
	shortIDLenV2 = 16
)

// KeyInput is everything a base key is derived from. All of it is known
// before the archive's content is streamed (identity and container id come
// from the small spec.dump/config.dump members, size from fstat), and all
// of it is recorded in the manifest. A v2 key uses only the first five
// fields; the last three feed the v1 short id.
type KeyInput struct {
	Namespace, Pod, Container string
	Node                      string
	CheckpointedAt            time.Time
	ContainerID               string
	OriginalName              string
	Size                      int64 // plaintext (archive) size in bytes
}

// Objects are the names of every object of one vaulted checkpoint.
type Objects struct {
	Base             string // the base key; not itself an object
	Ciphertext       string
	CiphertextSig    string
	CiphertextBundle string
	Manifest         string
	ManifestSig      string
	ManifestBundle   string
}

// ObjectsFor names the objects under base.
func ObjectsFor(base string) Objects {
	return Objects{
		Base:             base,
		Ciphertext:       base + SuffixCiphertext,
		CiphertextSig:    base + SuffixCiphertextSig,
		CiphertextBundle: base + SuffixCiphertextBundle,
		Manifest:         base + SuffixManifest,
		ManifestSig:      base + SuffixManifestSig,
		ManifestBundle:   base + SuffixManifestBundle,
	}
}

// All lists the six object names, the manifest last: the order in which a
// writer stores them (a manifest in the store means its companions are
// there too) and a prover checks them.
func (o Objects) All() []string {
	return []string{o.Ciphertext, o.CiphertextSig, o.CiphertextBundle, o.ManifestSig, o.ManifestBundle, o.Manifest}
}

// BaseKeyOf returns the base key of an object name carrying one of the
// suffixes above, and whether it had one. The longest suffix is tried
// first, since ".sig" also ends ".manifest.sig".
func BaseKeyOf(name string) (string, bool) {
	for _, s := range []string{SuffixManifestBundle, SuffixManifestSig, SuffixManifest,
		SuffixCiphertextBundle, SuffixCiphertext, SuffixCiphertextSig} {
		if b, ok := strings.CutSuffix(name, s); ok {
			return b, true
		}
	}
	return "", false
}

// NewKey returns a fresh v2 base key
//
//	<namespace>/<pod>/<container>/<checkpointed>-<node>-<short id>
//
// where <checkpointed> is the checkpoint time in UTC as 20260313T214306Z
// and <short id> is 16 random lowercase hex digits. Every upload attempt
// takes a new key, and the daemon creates every object with a create-only
// Put: two archives (even identical in every metadata field, as two
// checkpoints of an idle container in one second are) never share a key,
// and a retry after any failure never collides with its own earlier,
// possibly WORM-locked, upload. The signed manifest names its key, so a
// verifier still detects objects moved or replayed under another name.
func NewKey(in KeyInput) (string, error) {
	prefix, err := keyPrefix(in)
	if err != nil {
		return "", err
	}
	var r [shortIDLenV2 / 2]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("choosing an object key: %w", err)
	}
	return prefix + "-" + hex.EncodeToString(r[:]), nil
}

// BaseKey derives a v1 base key, whose short id is ShortID(in). Format v1
// derived the whole key from the archive's metadata, so two archives that
// agreed in every input (one container checkpointed twice in one second
// with equal sizes) got the same key, and a retry reused its key even under
// Object Lock. Writers use NewKey; BaseKey remains to verify v1 manifests.
func BaseKey(in KeyInput) (string, error) {
	prefix, err := keyPrefix(in)
	if err != nil {
		return "", err
	}
	if in.Size < 0 {
		return "", fmt.Errorf("invalid object key input: negative size %d", in.Size)
	}
	return prefix + "-" + ShortID(in), nil
}

// keyPrefix is a base key without its short id and the dash before it.
func keyPrefix(in KeyInput) (string, error) {
	if err := in.validate(); err != nil {
		return "", err
	}
	return in.Namespace + "/" + in.Pod + "/" + in.Container + "/" +
		in.CheckpointedAt.UTC().Format(compactTime) + "-" + in.Node, nil
}

// checkKey reports whether key is a base key of the given format for in.
func checkKey(format, key string, in KeyInput) error {
	if format == FormatV1 {
		want, err := BaseKey(in)
		if err != nil {
			return err
		}
		if key != want {
			return fmt.Errorf("object %q is not the key derived from the manifest's fields (%q)", key, want)
		}
		return nil
	}
	prefix, err := keyPrefix(in)
	if err != nil {
		return err
	}
	id, ok := strings.CutPrefix(key, prefix+"-")
	if !ok || len(id) != shortIDLenV2 || !isLowerHex(id) {
		return fmt.Errorf("object %q is not %q followed by a %d-digit hex short id", key, prefix+"-", shortIDLenV2)
	}
	return nil
}

func (in KeyInput) validate() error {
	if err := ValidateLabel("namespace", in.Namespace); err != nil {
		return err
	}
	if err := ValidateSubdomain("pod", in.Pod); err != nil {
		return err
	}
	if err := ValidateLabel("container", in.Container); err != nil {
		return err
	}
	if err := ValidateSubdomain("node", in.Node); err != nil {
		return err
	}
	if in.CheckpointedAt.IsZero() {
		return errors.New("invalid object key input: checkpoint time is missing")
	}
	if y := in.CheckpointedAt.UTC().Year(); y < 1970 || y > 9999 {
		return fmt.Errorf("invalid object key input: checkpoint time %s is out of range", in.CheckpointedAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// ShortID is the v1 short id: the first 12 lowercase hex digits of SHA-256
// over the domain string "ckvault.dev/shortid/v1" and then, each preceded
// by its length as a 4-byte big-endian integer, the node, the container
// id, the original file name, the size in decimal and the checkpoint time
// in the compact form.
func ShortID(in KeyInput) string {
	h := sha256.New()
	h.Write([]byte("ckvault.dev/shortid/v1"))
	for _, f := range []string{in.Node, in.ContainerID, in.OriginalName,
		strconv.FormatInt(in.Size, 10), in.CheckpointedAt.UTC().Format(compactTime)} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))[:shortIDLenV1]
}

// KeyParts are the components of a base key
// <namespace>/<pod>/<container>/<checkpointed>-<node>-<short id>.
type KeyParts struct {
	Namespace, Pod, Container, Node, ShortID string
	Checkpointed                             time.Time
}

// ParseKey splits a base key of either format into its components. ok is
// false for a key that does not have the shape, or whose parts break the
// name rules a writer checks (internal/k8sname): such a key was not
// written by one, and its parts must not be taken as an identity.
func ParseKey(base string) (p KeyParts, ok bool) {
	seg := strings.Split(base, "/")
	if len(seg) != 4 {
		return KeyParts{}, false
	}
	last := seg[3]
	const tlen = len(compactTime)
	if len(last) < tlen+1+1+1+shortIDLenV1 || last[tlen] != '-' {
		return KeyParts{}, false
	}
	t, err := time.Parse(compactTime, last[:tlen])
	if err != nil {
		return KeyParts{}, false
	}
	rest := last[tlen+1:]
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 {
		return KeyParts{}, false
	}
	id := rest[i+1:]
	if (len(id) != shortIDLenV1 && len(id) != shortIDLenV2) || !isLowerHex(id) {
		return KeyParts{}, false
	}
	p = KeyParts{Namespace: seg[0], Pod: seg[1], Container: seg[2], Node: rest[:i], ShortID: id, Checkpointed: t}
	if !k8sname.Namespace.Valid(p.Namespace) || !k8sname.Pod.Valid(p.Pod) ||
		!k8sname.Container.Valid(p.Container) || !k8sname.Node.Valid(p.Node) {
		return KeyParts{}, false
	}
	return p, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return s != ""
}

// ValidateLabel checks a Kubernetes DNS-1123 label (namespace and
// container names) by the one rule in internal/k8sname. Such a name cannot
// contain "/", "..", upper case or control characters, so it is safe as a
// key segment.
func ValidateLabel(what, s string) error { return k8sname.Label.Check(what, s) }

// ValidateSubdomain checks a Kubernetes DNS-1123 subdomain (pod and node
// names) by the one rule in internal/k8sname.
func ValidateSubdomain(what, s string) error { return k8sname.Subdomain.Check(what, s) }
