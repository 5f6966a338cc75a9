package manifest

import (
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

// shortIDLen is the number of hex digits of the short id (48 bits).
const shortIDLen = 12

// KeyInput is everything a base key is derived from. All of it is known
// before the archive's content is streamed (identity and container id come
// from the small spec.dump/config.dump members, size from fstat), and all
// of it is recorded in the manifest, so a verifier recomputes the key.
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

// BaseKey derives the base key
//
//	<namespace>/<pod>/<container>/<checkpointed>-<node>-<short id>
//
// where <checkpointed> is the checkpoint time in UTC as 20260313T214306Z
// and <short id> is ShortID(in). The same archive always gets the same key,
// so a retry after a crash overwrites its own half-written objects rather
// than leaving a second copy; two archives that differ in any input
// (including two checkpoints in one second with different sizes) get
// different keys.
func BaseKey(in KeyInput) (string, error) {
	if err := in.validate(); err != nil {
		return "", err
	}
	return in.Namespace + "/" + in.Pod + "/" + in.Container + "/" +
		in.CheckpointedAt.UTC().Format(compactTime) + "-" + in.Node + "-" + ShortID(in), nil
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
	if in.Size < 0 {
		return fmt.Errorf("invalid object key input: negative size %d", in.Size)
	}
	return nil
}

// ShortID is the last part of a base key: the first 12 lowercase hex
// digits of SHA-256 over the domain string "ckvault.dev/shortid/v1" and then,
// each preceded by its length as a 4-byte big-endian integer, the node,
// the container id, the original file name, the size in decimal and the
// checkpoint time in the compact form. Length prefixes make the encoding
// unambiguous.
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
	return hex.EncodeToString(h.Sum(nil))[:shortIDLen]
}

// ValidateLabel checks a Kubernetes DNS-1123 label (namespace and
// container names) by the one rule in internal/k8sname. Such a name cannot
// contain "/", "..", upper case or control characters, so it is safe as a
// key segment.
func ValidateLabel(what, s string) error { return k8sname.Label.Check(what, s) }

// ValidateSubdomain checks a Kubernetes DNS-1123 subdomain (pod and node
// names) by the one rule in internal/k8sname.
func ValidateSubdomain(what, s string) error { return k8sname.Subdomain.Check(what, s) }
