package envelope

import (
	"bufio"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/plugin"
	"filippo.io/age/tag"
	"golang.org/x/crypto/ssh"
)

// Kind is the type of a recipient. Its value is stable and may appear in
// manifests and logs.
type Kind string

const (
	KindX25519     Kind = "x25519"          // age1…
	KindHybrid     Kind = "mlkem768x25519"  // age1pq1…
	KindTag        Kind = "p256tag"         // age1tag1…
	KindTagPQ      Kind = "mlkem768p256tag" // age1tagpq1…
	KindSSHEd25519 Kind = "ssh-ed25519"
	KindSSHRSA     Kind = "ssh-rsa"
	KindPlugin     Kind = "plugin" // age1<name>1…
)

// PostQuantum reports whether files to this kind of recipient resist a
// quantum adversary. Plugins report false: whether a plugin is post-quantum
// is only known when it wraps a key (see [RecipientSet]).
func (k Kind) PostQuantum() bool { return k == KindHybrid || k == KindTagPQ }

// Recipient is one parsed recipient: who a file is encrypted to.
type Recipient struct {
	// Text is the canonical encoding: lowercase Bech32 for age1… recipients,
	// "type base64" (no options, no comment) for SSH keys. It is what
	// [Fingerprint] hashes and what should be written into configs.
	Text string
	// Kind is the recipient type.
	Kind Kind
	// Fingerprint is [Fingerprint](Text).
	Fingerprint string
	// Plugin is the plugin name for KindPlugin recipients, else empty.
	Plugin string
	// Age is the recipient as filippo.io/age uses it.
	Age age.Recipient
}

// String returns the canonical encoding of r.
func (r Recipient) String() string { return r.Text }

// Options configure recipient parsing. The zero value accepts every
// recipient type except plugins.
type Options struct {
	// PluginDir is the only directory from which age-plugin-<name> binaries
	// are executed. It must be an absolute path. Empty refuses plugin
	// recipients.
	PluginDir string
	// PluginUI lets a plugin talk to a person (messages, PINs,
	// confirmations). Nil uses a non-interactive UI that logs messages and
	// refuses requests, which is what a daemon wants.
	PluginUI *plugin.ClientUI
}

// maxLineLength bounds one recipient, as sshd(8) and the age CLI do (8 KiB).
// A hybrid recipient is about 2 KB.
const maxLineLength = 8 << 10

// maxRecipientsFile bounds a recipients file, as the age CLI does.
const maxRecipientsFile = 16 << 20

// ErrNotRecipient is wrapped by parse errors for strings that are not a
// recipient of any known type.
var ErrNotRecipient = errors.New("not a recipient")

// ParseRecipient parses one recipient with the zero [Options] (no plugins).
func ParseRecipient(s string) (Recipient, error) { return Options{}.ParseRecipient(s) }

// ParseRecipient parses one recipient string. Surrounding white space is
// ignored. Errors never echo input that could be secret: an identity
// pasted where a recipient belongs is named as such, not printed.
func (o Options) ParseRecipient(s string) (Recipient, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return Recipient{}, fmt.Errorf("empty recipient: %w", ErrNotRecipient)
	case len(s) > maxLineLength:
		return Recipient{}, fmt.Errorf("recipient is %d bytes long, more than the %d allowed: %w", len(s), maxLineLength, ErrNotRecipient)
	case !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\x00"):
		return Recipient{}, fmt.Errorf("recipient contains invalid characters: %w", ErrNotRecipient)
	case strings.HasPrefix(strings.ToUpper(s), "AGE-"):
		// Never print it: it is very likely a secret key.
		return Recipient{}, fmt.Errorf("this is an age identity (a secret key), not a recipient; use its public key, printed by `age-keygen -y KEYFILE`: %w", ErrNotRecipient)
	}
	if strings.HasPrefix(strings.ToLower(s), "age1") {
		// Bech32 is case-insensitive but must not mix cases; age's decoder
		// only accepts lowercase here, and one canonical form keeps
		// fingerprints stable.
		if s != strings.ToUpper(s) && s != strings.ToLower(s) {
			return Recipient{}, fmt.Errorf("recipient %s: mixed upper and lower case: %w", abbreviate(s), ErrNotRecipient)
		}
		return o.parseAge1(strings.ToLower(s))
	}
	if strings.HasPrefix(s, "ssh-") || strings.Contains(s, " ssh-") {
		return parseSSH(s)
	}
	return Recipient{}, fmt.Errorf("unknown recipient type (want age1…, age1pq1…, age1tag1…, ssh-ed25519 or ssh-rsa; the value is not shown in case it is secret): %w", ErrNotRecipient)
}

func (o Options) parseAge1(s string) (Recipient, error) {
	r := Recipient{Text: s, Fingerprint: Fingerprint(s)}
	var err error
	switch {
	case strings.HasPrefix(s, "age1tag1") || strings.HasPrefix(s, "age1tagpq1"):
		var t *tag.Recipient
		t, err = tag.ParseRecipient(s)
		if err == nil {
			r.Age, r.Kind = t, KindTag
			if t.Hybrid() {
				r.Kind = KindTagPQ
			}
		}
	case strings.HasPrefix(s, "age1pq1"):
		r.Kind = KindHybrid
		r.Age, err = age.ParseHybridRecipient(s)
	case strings.Count(s, "1") > 1:
		// age1<name>1<data>: the Bech32 separator is the last "1", so a
		// second "1" means a human-readable part longer than "age".
		r.Kind = KindPlugin
		var name string
		name, _, err = plugin.ParseRecipient(s)
		if err == nil {
			r.Plugin = name
			r.Age, err = o.newPluginRecipient(s, name)
		}
	default:
		r.Kind = KindX25519
		r.Age, err = age.ParseX25519Recipient(s)
	}
	if errors.Is(err, ErrPluginDir) {
		return Recipient{}, fmt.Errorf("recipient %s: %w", abbreviate(s), err)
	}
	if err != nil {
		return Recipient{}, fmt.Errorf("recipient %s: %v: %w", abbreviate(s), err, ErrNotRecipient)
	}
	return r, nil
}

func parseSSH(s string) (Recipient, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return Recipient{}, fmt.Errorf("SSH recipient %s: %v: %w", abbreviate(s), err, ErrNotRecipient)
	}
	text := canonicalSSH(pub)
	a, err := agessh.ParseRecipient(text)
	if err != nil {
		// agessh echoes the whole key, which is public: fine to keep.
		return Recipient{}, fmt.Errorf("%v (supported SSH keys: ssh-ed25519, ssh-rsa of 2048 bits or more): %w", err, ErrNotRecipient)
	}
	return Recipient{Text: text, Kind: Kind(pub.Type()), Fingerprint: Fingerprint(text), Age: a}, nil
}

func canonicalSSH(pub ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pub)), "\n")
}

// abbreviate shortens a public recipient for error messages: hybrid keys are
// about 2000 characters long.
func abbreviate(s string) string {
	if len(s) <= 24 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q", s[:16]+"…"+s[len(s)-6:])
}

// ParseRecipientsFile parses a recipients file with the zero [Options].
func ParseRecipientsFile(r io.Reader, name string) ([]Recipient, error) {
	return Options{}.ParseRecipientsFile(r, name)
}

// LoadRecipientsFile reads the recipients file at path with the zero [Options].
func LoadRecipientsFile(path string) ([]Recipient, error) {
	return Options{}.LoadRecipientsFile(path)
}

// ParseRecipientsFile parses a recipients file: one recipient per line;
// blank lines and lines starting with "#" (after leading white space) are
// ignored. name is used in errors, which give the line number but never the
// line, as it could be a secret key in the wrong file. A file with no
// recipient is an error.
func (o Options) ParseRecipientsFile(r io.Reader, name string) ([]Recipient, error) {
	lr := &io.LimitedReader{R: r, N: maxRecipientsFile + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 4096), maxLineLength+2)
	var out []Recipient
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rc, err := o.ParseRecipient(line)
		if err != nil {
			if strings.HasPrefix(strings.ToUpper(line), "AGE-") {
				return nil, fmt.Errorf("recipients file %q, line %d: an identity (secret key) is in a recipients file; put only public keys there, and treat this file as leaked: %w", name, n, ErrNotRecipient)
			}
			return nil, fmt.Errorf("recipients file %q, line %d: %w", name, n, err)
		}
		out = append(out, rc)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("recipients file %q, line %d: line longer than %d bytes", name, n+1, maxLineLength)
		}
		return nil, fmt.Errorf("reading recipients file %q: %w", name, err)
	}
	if lr.N == 0 {
		return nil, fmt.Errorf("recipients file %q is larger than %d bytes", name, maxRecipientsFile)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("recipients file %q has no recipients; add at least one age1pq1… public key", name)
	}
	return out, nil
}

// LoadRecipientsFile reads and parses the recipients file at path.
func (o Options) LoadRecipientsFile(path string) ([]Recipient, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening recipients file: %w", err)
	}
	defer f.Close()
	return o.ParseRecipientsFile(f, path)
}

// FingerprintPrefix starts every recipient fingerprint.
const FingerprintPrefix = "ckfp1"

var fpEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Fingerprint returns a short, stable identifier of a recipient, for
// manifests and error messages. The construction, which docs/FORMAT.md
// references, is:
//
//	"ckfp1" || lowercase-base32-nopad( SHA-256( canonical )[:10] )
//
// that is "ckfp1" followed by 16 characters of the RFC 4648 base32 alphabet
// in lowercase, where canonical is the UTF-8 recipient string with
// surrounding white space removed and then
//
//   - for strings starting with "age1" in any case: lowercased;
//   - for SSH public keys in authorized_keys form: "type SP base64" with
//     options and comment dropped (as ssh.MarshalAuthorizedKey prints it);
//   - otherwise: unchanged.
//
// 80 bits identify a recipient among many; a fingerprint is a label, not a
// commitment: verifiers that need to bind keys compare the full recipient.
func Fingerprint(recipient string) string {
	s := strings.TrimSpace(recipient)
	switch {
	case strings.HasPrefix(strings.ToLower(s), "age1"):
		s = strings.ToLower(s)
	default:
		if pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s)); err == nil {
			s = canonicalSSH(pub)
		}
	}
	sum := sha256.Sum256([]byte(s))
	return FingerprintPrefix + fpEncoding.EncodeToString(sum[:10])
}
