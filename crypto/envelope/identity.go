package envelope

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"unicode/utf8"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/plugin"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

// IdentityOptions configure [LoadIdentities].
type IdentityOptions struct {
	// PluginDir is the only directory from which age-plugin-<name> binaries
	// are executed for AGE-PLUGIN-… identities (absolute path; empty refuses
	// plugin identities). $PATH is never searched.
	PluginDir string
	// PluginUI lets plugins talk to a person; nil refuses their requests.
	PluginUI *plugin.ClientUI
	// Passphrase returns the passphrase of the encrypted key file at path
	// (an encrypted SSH key, or a passphrase-encrypted age identity file).
	// It is called only when the key is needed. Nil makes encrypted keys an
	// error. [DefaultPassphrase] is a ready implementation.
	Passphrase func(path string) ([]byte, error)
	// Logger receives the warning about group- or world-readable key files.
	// Nil uses slog.Default().
	Logger *slog.Logger
}

// Environment variables read by [DefaultPassphrase].
const (
	EnvIdentityPassphrase     = "CKVAULT_IDENTITY_PASSPHRASE"
	EnvIdentityPassphraseFile = "CKVAULT_IDENTITY_PASSPHRASE_FILE"
)

// maxIdentityFile bounds an identity file (age's own limit).
const maxIdentityFile = 16 << 20

// LoadIdentities reads the identity files at paths. Each may hold age keys
// one per line (AGE-SECRET-KEY-1…, AGE-SECRET-KEY-PQ-1…, AGE-PLUGIN-…;
// blank and "#" lines ignored), be a passphrase-encrypted age identity
// file, or be an SSH private key (ed25519 or RSA, possibly encrypted). A key
// file that group or others can read is used, with a warning, as age does.
// Errors name the file and line, never key material.
func LoadIdentities(paths []string, opts IdentityOptions) ([]age.Identity, error) {
	if len(paths) == 0 {
		return nil, errors.New("no identity files given; pass the age key that matches one of the recipients (-i FILE)")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var ids []age.Identity
	for _, path := range paths {
		got, err := loadIdentityFile(path, opts, log)
		if err != nil {
			return nil, err
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

func loadIdentityFile(path string, opts IdentityOptions, log *slog.Logger) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening identity file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity file %q: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("identity file %q is not a regular file", path)
	}
	if st.Mode().Perm()&0o044 != 0 {
		log.Warn("identity file is readable by group or others; restrict it with chmod 600",
			"path", path, "mode", st.Mode().Perm().String())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxIdentityFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading identity file %q: %w", path, err)
	}
	if len(data) > maxIdentityFile {
		return nil, fmt.Errorf("identity file %q is larger than %d bytes", path, maxIdentityFile)
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.HasPrefix(data, []byte("age-encryption.org/")):
		return encryptedIdentityFile(path, data, opts)
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN")):
		return sshIdentity(path, data, opts)
	default:
		return parseIdentityLines(path, data, opts)
	}
}

func parseIdentityLines(path string, data []byte, opts IdentityOptions) ([]age.Identity, error) {
	var ids []age.Identity
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxLineLength+2)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !utf8.ValidString(line) {
			return nil, fmt.Errorf("identity file %q, line %d: not valid UTF-8", path, n)
		}
		id, err := parseIdentity(line, opts)
		if err != nil {
			return nil, fmt.Errorf("identity file %q, line %d: %w", path, n, err)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("identity file %q, line %d: %v", path, n+1, err)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("identity file %q holds no identities", path)
	}
	return ids, nil
}

// parseIdentity never includes s in errors: it is secret.
func parseIdentity(s string, opts IdentityOptions) (age.Identity, error) {
	switch {
	case strings.HasPrefix(s, "AGE-SECRET-KEY-PQ-1"):
		id, err := age.ParseHybridIdentity(s)
		if err != nil {
			return nil, errors.New("malformed post-quantum age identity")
		}
		return id, nil
	case strings.HasPrefix(s, "AGE-SECRET-KEY-1"):
		id, err := age.ParseX25519Identity(s)
		if err != nil {
			return nil, errors.New("malformed X25519 age identity")
		}
		return id, nil
	case strings.HasPrefix(s, "AGE-PLUGIN-"):
		name, _, err := plugin.ParseIdentity(s)
		if err != nil {
			return nil, errors.New("malformed plugin identity")
		}
		if _, err := pluginBinary(opts.PluginDir, name); err != nil {
			return nil, err
		}
		ui := opts.PluginUI
		if ui == nil {
			ui = daemonUI()
		}
		id, err := plugin.NewIdentity(s, ui)
		if err != nil {
			return nil, errors.New("malformed plugin identity")
		}
		return &pluginIdentity{id: id, dir: opts.PluginDir, name: name}, nil
	case strings.HasPrefix(s, "age1") || strings.HasPrefix(s, "ssh-"):
		return nil, errors.New("this is a recipient (public key), not an identity; give the secret key file")
	default:
		return nil, errors.New("unknown identity type (want AGE-SECRET-KEY-PQ-1…, AGE-SECRET-KEY-1…, AGE-PLUGIN-… or an SSH private key)")
	}
}

func sshIdentity(path string, pemBytes []byte, opts IdentityOptions) ([]age.Identity, error) {
	id, err := agessh.ParseIdentity(pemBytes)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		pub := missing.PublicKey
		if pub == nil {
			// Old PEM formats do not carry the public key: age reads it from
			// the .pub file next to the key, and so do we.
			b, err := os.ReadFile(path + ".pub")
			if err != nil {
				return nil, fmt.Errorf("encrypted SSH key %q: its public key is needed to match recipients: %v; provide %s.pub or convert the key with `ssh-keygen -p -o -f %s`", path, err, path, path)
			}
			pub, _, _, _, err = ssh.ParseAuthorizedKey(b)
			if err != nil {
				return nil, fmt.Errorf("SSH public key %q: %v", path+".pub", err)
			}
		}
		ask := func() ([]byte, error) {
			if opts.Passphrase == nil {
				return nil, fmt.Errorf("SSH key %q is encrypted and no passphrase source is configured", path)
			}
			return opts.Passphrase(path)
		}
		eid, err := agessh.NewEncryptedSSHIdentity(pub, pemBytes, ask)
		if err != nil {
			return nil, fmt.Errorf("encrypted SSH key %q: %v", path, err)
		}
		return []age.Identity{eid}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("SSH private key %q: %v (supported: ed25519, RSA)", path, err)
	}
	return []age.Identity{id}, nil
}

// encryptedIdentityFile decrypts a passphrase-protected identity file (as
// written by `age -p` around an age-keygen output) and parses its lines.
func encryptedIdentityFile(path string, data []byte, opts IdentityOptions) ([]age.Identity, error) {
	if opts.Passphrase == nil {
		return nil, fmt.Errorf("identity file %q is passphrase-encrypted and no passphrase source is configured", path)
	}
	pass, err := opts.Passphrase(path)
	if err != nil {
		return nil, fmt.Errorf("identity file %q: %w", path, err)
	}
	sid, err := age.NewScryptIdentity(string(pass))
	if err != nil {
		return nil, fmt.Errorf("identity file %q: %v", path, err)
	}
	r, err := age.Decrypt(bytes.NewReader(data), sid)
	if err != nil {
		return nil, fmt.Errorf("identity file %q: decrypting with the passphrase: %w", path, err)
	}
	plain, err := io.ReadAll(io.LimitReader(r, maxIdentityFile))
	if err != nil {
		return nil, fmt.Errorf("identity file %q: decrypting: %w", path, err)
	}
	return parseIdentityLines(path, plain, opts)
}

// DefaultPassphrase is a ready [IdentityOptions.Passphrase]: it returns
// $CKVAULT_IDENTITY_PASSPHRASE if set, else the contents of the file named
// by $CKVAULT_IDENTITY_PASSPHRASE_FILE (one trailing newline removed), else
// prompts on the controlling terminal; without a terminal it fails with
// what to set.
func DefaultPassphrase(path string) ([]byte, error) {
	if p, ok := os.LookupEnv(EnvIdentityPassphrase); ok {
		return []byte(p), nil
	}
	if f := os.Getenv(EnvIdentityPassphraseFile); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading passphrase file from $%s: %w", EnvIdentityPassphraseFile, err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		return bytes.TrimSuffix(b, []byte("\r")), nil
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return nil, fmt.Errorf("key %q is encrypted and there is no terminal to ask for its passphrase; set $%s or $%s",
			path, EnvIdentityPassphrase, EnvIdentityPassphraseFile)
	}
	defer tty.Close()
	fmt.Fprintf(tty, "Enter passphrase for %q: ", path)
	p, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	if err != nil {
		return nil, fmt.Errorf("reading passphrase for %q: %w", path, err)
	}
	return p, nil
}

// GenerateIdentity makes a new age key pair: a hybrid ML-KEM-768 + X25519
// (post-quantum) pair when postQuantum is set, the recommended default, or a
// classic X25519 pair. It returns the identity (secret) and recipient
// (public) encodings.
func GenerateIdentity(postQuantum bool) (identity, recipient string, err error) {
	if postQuantum {
		id, err := age.GenerateHybridIdentity()
		if err != nil {
			return "", "", fmt.Errorf("generating post-quantum age key: %w", err)
		}
		return id.String(), id.Recipient().String(), nil
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", fmt.Errorf("generating X25519 age key: %w", err)
	}
	return id.String(), id.Recipient().String(), nil
}

// ErrDamaged is wrapped by read errors of a [Decrypt] stream: the
// ciphertext was truncated or modified after its header was accepted.
var ErrDamaged = errors.New("age ciphertext is truncated or has been modified")

// Decrypt reads the age header from src, unwraps the file key with the
// first matching identity, and returns the plaintext stream.
//
// If no identity matches, the error wraps age.ErrIncorrectIdentity (and is
// an *age.NoIdentityMatchError); callers add the recipients' fingerprints
// from the manifest.
//
// WARNING: the returned reader releases each 64 KiB chunk as soon as that
// chunk authenticates. Truncation or tampering is reported only when the
// damaged chunk is reached, possibly at the very end, as a read error
// wrapping [ErrDamaged]. Nothing read is trustworthy until Read returns
// io.EOF with no error before it: write to a temporary file and publish it
// only then, and never act on a prefix.
func Decrypt(src io.Reader, ids ...age.Identity) (io.Reader, error) {
	if len(ids) == 0 {
		return nil, errors.New("age decryption: no identities given")
	}
	r, err := age.Decrypt(src, ids...)
	if err != nil {
		if errors.Is(err, age.ErrIncorrectIdentity) {
			return nil, fmt.Errorf("none of the %d identities can decrypt this file: %w", len(ids), err)
		}
		return nil, fmt.Errorf("age decryption: %w", err)
	}
	return &damageReader{r: r}, nil
}

type damageReader struct{ r io.Reader }

func (d *damageReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w (or could not be read): %w; discard everything decrypted so far", ErrDamaged, err)
	}
	return n, err
}
