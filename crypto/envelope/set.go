package envelope

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"

	"filippo.io/age"
)

// Sizes of the age-encryption.org/v1 format (C2SP age.md, and
// filippo.io/age/internal/stream).
const (
	// ChunkSize is the plaintext size of every STREAM chunk but the last.
	ChunkSize = 64 << 10
	// TagSize is the Poly1305 tag added to every chunk.
	TagSize = 16
	// NonceSize is the payload nonce between header and payload.
	NonceSize = 16

	headerIntro   = "age-encryption.org/v1\n"
	headerFooter  = "---"
	macSize       = 32
	stanzaColumns = 64
	fileKeySize   = 16
)

// ErrMixedRecipients is wrapped by the error for a set that mixes
// post-quantum and classic recipients.
var ErrMixedRecipients = errors.New("post-quantum and classic recipients cannot be mixed")

// ErrStanzaSize is wrapped when a recipient's stanza size changes between
// files, which would break exact size prediction.
var ErrStanzaSize = errors.New("recipient stanza size is not deterministic")

// RecipientSet is a validated, deduplicated, non-empty set of recipients
// that can all go into one file. It is safe for concurrent use.
type RecipientSet struct {
	rs []Recipient // sorted by fingerprint
	pq bool

	mu      sync.Mutex
	stanzas []int // encoded size of each recipient's stanzas; nil until measured
}

// NewRecipientSet validates rs as the readers of one file: at least one,
// duplicates (same canonical encoding) collapsed, and not mixing
// post-quantum with classic recipients.
func NewRecipientSet(rs ...Recipient) (*RecipientSet, error) {
	if len(rs) == 0 {
		return nil, errors.New("no recipients: nobody could decrypt the checkpoints; configure at least one recipient (an age1pq1… key from `ckvault keygen`)")
	}
	byFP := make(map[string]Recipient, len(rs))
	for _, r := range rs {
		if r.Age == nil || r.Fingerprint == "" {
			return nil, errors.New("recipient set: a recipient was not made by ParseRecipient")
		}
		byFP[r.Fingerprint] = r
	}
	s := &RecipientSet{}
	for _, r := range byFP {
		s.rs = append(s.rs, r)
	}
	sort.Slice(s.rs, func(i, j int) bool { return s.rs[i].Fingerprint < s.rs[j].Fingerprint })

	var pq, classic []string
	for _, r := range s.rs {
		switch {
		case r.Kind.PostQuantum():
			pq = append(pq, r.Fingerprint)
		case r.Kind != KindPlugin:
			classic = append(classic, fmt.Sprintf("%s (%s)", r.Fingerprint, r.Kind))
		}
	}
	if len(pq) > 0 && len(classic) > 0 {
		return nil, mixedError(classic)
	}
	s.pq = len(pq) > 0
	return s, nil
}

func mixedError(classic []string) error {
	return fmt.Errorf("%w: %s would be classic recipients of a post-quantum file. "+
		"age refuses this because anyone who can break one classic stanza (a future quantum computer) "+
		"recovers the file key and reads the file, which voids the post-quantum protection of every other recipient. "+
		"Fix: give every reader a post-quantum key (`ckvault keygen` or `age-keygen -pq`, an age1pq1… recipient), "+
		"or use classic keys for all of them (`ckvault keygen --classic`)", ErrMixedRecipients, strings.Join(classic, ", "))
}

// Recipients returns the recipients, ordered by fingerprint.
func (s *RecipientSet) Recipients() []Recipient { return slices.Clone(s.rs) }

// Fingerprints returns the recipients' fingerprints, sorted.
func (s *RecipientSet) Fingerprints() []string {
	out := make([]string, len(s.rs))
	for i, r := range s.rs {
		out[i] = r.Fingerprint
	}
	return out
}

// PostQuantum reports whether files to this set resist a quantum adversary.
// Plugin-only sets report false (unknown until a plugin wraps a key).
func (s *RecipientSet) PostQuantum() bool { return s.pq }

// HeaderSize returns the exact size of the age header for this set,
// measured once by wrapping a throwaway file key for each recipient (which
// runs plugins once).
func (s *RecipientSet) HeaderSize() (int64, error) {
	sizes, err := s.stanzaSizes()
	if err != nil {
		return 0, err
	}
	n := int64(len(headerIntro) + len(headerFooter) + 1 + b64Len(macSize) + 1)
	for _, sz := range sizes {
		n += int64(sz)
	}
	return n, nil
}

// CiphertextSize returns the exact size of the age file that [Encrypt]
// produces for a plaintext of plaintextSize bytes.
func (s *RecipientSet) CiphertextSize(plaintextSize int64) (int64, error) {
	if plaintextSize < 0 {
		return 0, fmt.Errorf("negative plaintext size %d", plaintextSize)
	}
	hdr, err := s.HeaderSize()
	if err != nil {
		return 0, err
	}
	chunks := max(1, (plaintextSize+ChunkSize-1)/ChunkSize)
	over := hdr + NonceSize + chunks*TagSize
	if plaintextSize > math.MaxInt64-over {
		return 0, fmt.Errorf("plaintext size %d is too large", plaintextSize)
	}
	return plaintextSize + over, nil
}

// PayloadSize returns the size of the STREAM payload (after header and
// nonce) for a plaintext of plaintextSize bytes.
func PayloadSize(plaintextSize int64) int64 {
	return plaintextSize + max(1, (plaintextSize+ChunkSize-1)/ChunkSize)*TagSize
}

func (s *RecipientSet) stanzaSizes() ([]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stanzas != nil {
		return s.stanzas, nil
	}
	key := make([]byte, fileKeySize)
	rand.Read(key)
	sizes := make([]int, len(s.rs))
	for i, r := range s.rs {
		st, err := r.Age.Wrap(key)
		if err != nil {
			return nil, fmt.Errorf("recipient %s (%s): wrapping a test key: %w", r.Fingerprint, r.Kind, err)
		}
		sizes[i] = stanzasSize(st)
	}
	s.stanzas = sizes
	return sizes, nil
}

// Encrypt starts an age file to every recipient of s on dst. Writes to the
// returned WriteCloser are encrypted; Close writes the final chunk (and does
// not close dst). The file is exactly CiphertextSize(n) bytes for n written
// bytes: Encrypt fails before writing anything if a recipient's stanza came
// out a different size than measured (a plugin with variable-size output).
func (s *RecipientSet) Encrypt(dst io.Writer) (io.WriteCloser, error) {
	sizes, err := s.stanzaSizes()
	if err != nil {
		return nil, err
	}
	ars := make([]age.Recipient, len(s.rs))
	for i, r := range s.rs {
		ars[i] = &checkedRecipient{r: r, size: sizes[i]}
	}
	w, err := age.Encrypt(dst, ars...)
	if err != nil {
		if strings.Contains(err.Error(), "can't mix post-quantum and classic") {
			return nil, mixedError([]string{"some plugin recipients"})
		}
		return nil, fmt.Errorf("age encryption to %d recipients: %w", len(s.rs), err)
	}
	return w, nil
}

// checkedRecipient forwards to a recipient (labels included, so age's
// post-quantum mixing check still applies) and enforces the stanza size
// measured for CiphertextSize.
type checkedRecipient struct {
	r    Recipient
	size int
}

func (c *checkedRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	s, _, err := c.WrapWithLabels(fileKey)
	return s, err
}

func (c *checkedRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	var (
		st     []*age.Stanza
		labels []string
		err    error
	)
	if l, ok := c.r.Age.(age.RecipientWithLabels); ok {
		st, labels, err = l.WrapWithLabels(fileKey)
	} else {
		st, err = c.r.Age.Wrap(fileKey)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("recipient %s (%s): %w", c.r.Fingerprint, c.r.Kind, err)
	}
	if got := stanzasSize(st); got != c.size {
		return nil, nil, fmt.Errorf("recipient %s (%s): stanza is %d bytes, %d when measured: %w; exact ciphertext sizes cannot be predicted for it",
			c.r.Fingerprint, c.r.Kind, got, c.size, ErrStanzaSize)
	}
	return st, labels, nil
}

// stanzasSize is the encoded size of stanzas in an age header:
//
//	"->" { SP arg } LF  wrapped-base64(body) LF
//
// where the body is unpadded base64 with a LF after every full 64-column
// line (so a body that fills its last line is followed by an empty line).
func stanzasSize(st []*age.Stanza) int {
	n := 0
	for _, s := range st {
		n += len("->") + 1 + len(s.Type)
		for _, a := range s.Args {
			n += 1 + len(a)
		}
		n++ // LF
		b := b64Len(len(s.Body))
		n += b + b/stanzaColumns + 1
	}
	return n
}

// b64Len is the length of unpadded base64 of n bytes.
func b64Len(n int) int { return (n*8 + 5) / 6 }
