package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
)

// keygenOptions are the flags of `ckvault keygen`.
type keygenOptions struct {
	dir     string
	classic bool
}

func (o *keygenOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.dir, "dir", "", "directory to write the keys to (created 0700 if missing; must not be group- or world-writable)")
	cmd.Flags().BoolVar(&o.classic, "classic", false, "make a classic X25519 age key instead of a hybrid post-quantum one")
}

// The files keygen writes, in the order it writes them.
const (
	keygenAgeKey     = "age.key"
	keygenAgePub     = "age.pub"
	keygenSigningKey = "signing.key"
	keygenSigningPub = "signing.pub"
)

func newKeygenCommand() *cobra.Command {
	var o keygenOptions
	cmd := &cobra.Command{
		Use:   "keygen --dir DIR [--classic]",
		Short: "Create an age key pair and a cosign-compatible signing key pair",
		Long: `keygen writes four files into DIR:

  age.key      the age identity that decrypts vaulted checkpoints (secret, 0600)
  age.pub      its recipient, for "recipients:" in the config (a hybrid
               post-quantum age1pq1... recipient; X25519 age1... with --classic)
  signing.key  the ECDSA P-256 signing key, in cosign's encrypted PEM format
               (secret, 0600); its password is $CKVAULT_SIGNING_PASSWORD, and
               may be empty
  signing.pub  its public key, what verifiers trust (signing.publicKey)

Both pairs work with the stock tools: "age -d -i age.key" decrypts what is
encrypted to age.pub, and "cosign sign-blob --key signing.key" (with
COSIGN_PASSWORD set to the same password) and "cosign verify-blob --key
signing.pub" accept the signing pair.

keygen never overwrites: if any of the four files exists it writes none of
them. Post-quantum and classic recipients cannot be mixed in one vault; use
--classic only if every other recipient is classic too.`,
		Example: `  # keys for a node; the password protects signing.key at rest
  CKVAULT_SIGNING_PASSWORD='correct horse battery staple' ckvault keygen --dir /etc/ckvault

  # a responder's classic key pair
  ckvault keygen --dir ~/.config/ckvault --classic`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.dir == "" {
				return usageError{"keygen: --dir is required (where to write the keys)"}
			}
			return runKeygen(cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runKeygen(stdout, stderr io.Writer, o keygenOptions) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return fmt.Errorf("keygen: resolving --dir %q: %w", o.dir, err)
	}
	if err := prepareKeyDir(dir); err != nil {
		return err
	}
	names := []string{keygenAgeKey, keygenAgePub, keygenSigningKey, keygenSigningPub}
	// Check every file first, so that nothing is written if any exists.
	for _, n := range names {
		p := filepath.Join(dir, n)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("keygen: %s already exists; keygen never overwrites keys — move it away or choose another --dir", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keygen: checking %s: %w", p, err)
		}
	}

	identity, recipient, err := envelope.GenerateIdentity(!o.classic)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	password, err := signing.PasswordFromEnv()()
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	signingKey, signingPub, err := signing.GenerateKeyPair(password)
	clear(password)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}

	now := time.Now().UTC().Format(time.RFC3339)
	contents := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		// The same layout as age-keygen: comments age ignores, then the key.
		keygenAgeKey:     {[]byte("# created: " + now + "\n# public key: " + recipient + "\n" + identity + "\n"), 0o600},
		keygenAgePub:     {[]byte(recipient + "\n"), 0o644},
		keygenSigningKey: {signingKey, 0o600},
		keygenSigningPub: {signingPub, 0o644},
	}
	var written []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := writeNewFile(p, contents[n].data, contents[n].mode); err != nil {
			// Leave all or nothing: remove what this run created.
			for _, w := range written {
				os.Remove(w)
			}
			return fmt.Errorf("keygen: %w", err)
		}
		written = append(written, p)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}

	kind := "hybrid post-quantum (ML-KEM-768 + X25519)"
	if o.classic {
		kind = "classic X25519"
	}
	fmt.Fprintf(stdout, "Public key (%s age recipient): %s\n", kind, recipient)
	fmt.Fprintf(stdout, "Wrote:\n")
	fmt.Fprintf(stdout, "  %s  age identity (secret, 0600)\n", filepath.Join(dir, keygenAgeKey))
	fmt.Fprintf(stdout, "  %s  age recipient, for recipients: in the config\n", filepath.Join(dir, keygenAgePub))
	fmt.Fprintf(stdout, "  %s  signing key, cosign encrypted PEM (secret, 0600)\n", filepath.Join(dir, keygenSigningKey))
	fmt.Fprintf(stdout, "  %s  signing public key, for signing.publicKey and cosign verify-blob --key\n", filepath.Join(dir, keygenSigningPub))
	if _, set := os.LookupEnv(signing.PasswordEnv); !set {
		fmt.Fprintf(stderr, "ckvault: warning: %s is not set, so %s is encrypted with an empty password; set it to protect the key at rest\n",
			signing.PasswordEnv, filepath.Join(dir, keygenSigningKey))
	}
	return nil
}

// prepareKeyDir creates dir 0700 if it is missing and refuses one that
// others could write to: they could replace a key between keygen and use.
func prepareKeyDir(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("keygen: creating key directory: %w", err)
		}
		st, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("keygen: key directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("keygen: %s is not a directory; give --dir a directory", dir)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("keygen: key directory %s is group- or world-writable (mode %04o), so others could replace the keys; use a private directory or run chmod go-w %s",
			dir, perm, dir)
	}
	return nil
}

// writeNewFile creates path with O_EXCL (never replacing anything, not
// following a planted symlink), writes data and syncs it.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; keygen never overwrites keys — move it away or choose another --dir", path)
		}
		return fmt.Errorf("creating %s: %w", path, err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
