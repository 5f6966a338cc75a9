// Package signing signs and verifies checkpoint-vault's artifacts with
// sigstore keys, one precomputed SHA-256 digest at a time.
//
// # What is signed
//
// Every signature is over the SHA-256 of an artifact that the caller has
// already hashed while streaming it (the vault reads a multi-gigabyte
// checkpoint archive exactly once). The artifact itself never passes through
// this package, so signing memory is constant. For that reason only ECDSA
// P-256 with SHA-256 is supported: it is cosign's default, its signature is
// defined over the digest, and stock `cosign verify-blob --key` checks it.
// Ed25519 keys are refused: pure Ed25519 must read the whole message, and
// Ed25519ph (what cosign uses for Ed25519 keys) is defined over a SHA-512
// prehash, which the pipeline does not compute.
//
// # Outputs
//
// Each signed artifact gets two detached forms (see docs/FORMAT.md):
//
//   - a ".sig" file: the base64 (standard alphabet, padded, no newline) of
//     the ASN.1 DER ECDSA signature, exactly what `cosign sign-blob` writes and
//     `cosign verify-blob --signature` reads;
//   - a ".sigstore.json" file: a sigstore bundle v0.3 with a public-key hint
//     and a message signature (digest + signature), which `cosign verify-blob
//     --new-bundle-format --bundle` accepts with a trusted root that has no
//     authorities and --insecure-ignore-tlog.
//
// # Keys
//
// Signing keys come from a PEM file — cosign's encrypted format (`cosign
// generate-key-pair`), or an unencrypted PKCS#8 or SEC 1 EC key — or from a
// KMS through sigstore's providers. Only the providers linked into this
// binary are used (awskms:// and hashivault://); sigstore's fallback of
// executing a `sigstore-kms-*` plugin found on $PATH is deliberately never
// reached, so a daemon cannot be made to run an arbitrary binary through
// its configuration.
//
// An encrypted key is decrypted in a short-lived copy of the program when
// the program has called DecryptHelperMain (ckvault does): scrypt needs
// 32–128 MiB for a moment, which would otherwise set the daemon's peak
// memory for good (see keyhelper.go).
//
// Verification is against a set of trusted public keys (TrustedKeys), so a
// signing key can be rotated while objects signed by the old key still
// verify.
package signing

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms"
	"github.com/sigstore/sigstore/pkg/signature/options"

	// The KMS providers this binary supports. Others (gcpkms, azurekms) pull
	// in large SDKs; LoadSigner names them as not built in.
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"
)

// PEM block types of private keys, as cosign writes and reads them.
const (
	// SigstorePrivateKeyPEMType is what `cosign generate-key-pair` writes
	// since cosign v2, and what GenerateKeyPair writes.
	SigstorePrivateKeyPEMType = "ENCRYPTED SIGSTORE PRIVATE KEY"
	// CosignPrivateKeyPEMType is the same format under its older name.
	CosignPrivateKeyPEMType = "ENCRYPTED COSIGN PRIVATE KEY"
)

// PasswordEnv is the environment variable PasswordFromEnv reads.
const PasswordEnv = "CKVAULT_SIGNING_PASSWORD"

// PasswordFunc returns the password of an encrypted signing key. It is
// called only when the key is encrypted, and the caller clears the slice
// after use, so it must return a fresh one. An empty password is valid
// (cosign allows it).
type PasswordFunc func() ([]byte, error)

// PasswordFromEnv reads the password from $CKVAULT_SIGNING_PASSWORD. An
// unset variable means the empty password, as for a key generated with the
// variable unset.
func PasswordFromEnv() PasswordFunc {
	return func() ([]byte, error) {
		return []byte(os.Getenv(PasswordEnv)), nil
	}
}

// PasswordFromFile reads the password from a file. One trailing newline
// ("\n" or "\r\n") is removed, since editors and `echo` add one; every
// other byte is part of the password.
func PasswordFromFile(path string) PasswordFunc {
	return func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading signing key password file: %w", err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		return b, nil
	}
}

// Signer signs SHA-256 digests with one ECDSA P-256 key, held in memory or
// in a KMS. It is safe for concurrent use.
type Signer struct {
	ref    string // the file path or KMS URI, for error messages
	sv     signature.Signer
	pub    *ecdsa.PublicKey
	pubPEM []byte
	hint   string
}

// linkedKMSSchemes lists the KMS URI schemes of providers compiled in.
func linkedKMSSchemes() []string {
	s := kms.SupportedProviders()
	slices.Sort(s)
	return s
}

// knownKMSSchemes are providers sigstore has but this binary does not link.
var knownKMSSchemes = []string{"gcpkms://", "azurekms://"}

// LoadSigner loads the signing key ref: a PEM file path or a KMS URI
// (awskms://…, hashivault://…). password is consulted only for an encrypted
// PEM file; it may be nil otherwise.
func LoadSigner(ctx context.Context, ref string, password PasswordFunc) (*Signer, error) {
	if scheme, ok := uriScheme(ref); ok {
		return loadKMSSigner(ctx, ref, scheme)
	}
	pemBytes, err := os.ReadFile(ref)
	if err != nil {
		return nil, fmt.Errorf("loading signing key: %w", err)
	}
	priv, err := parsePrivateKeyPEM(ctx, pemBytes, password)
	clear(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("loading signing key %s: %w", ref, err)
	}
	sv, err := signature.LoadECDSASigner(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("loading signing key %s: %w", ref, err)
	}
	return newSigner(ref, sv, &priv.PublicKey)
}

// uriScheme reports the "scheme://" prefix of ref, if it has one.
func uriScheme(ref string) (string, bool) {
	i := strings.Index(ref, "://")
	if i <= 0 || strings.ContainsAny(ref[:i], "/\\.") {
		return "", false
	}
	return ref[:i+3], true
}

func loadKMSSigner(ctx context.Context, ref, scheme string) (*Signer, error) {
	linked := linkedKMSSchemes()
	if !slices.Contains(linked, scheme) {
		// Calling kms.Get with an unknown scheme would make sigstore look for
		// and execute a sigstore-kms-* plugin on $PATH; never do that.
		if slices.Contains(knownKMSSchemes, scheme) {
			return nil, fmt.Errorf("signing key %s: the %s KMS provider is not built into ckvault (built in: %s); use one of those or a PEM key file",
				ref, scheme, strings.Join(linked, ", "))
		}
		return nil, fmt.Errorf("signing key %s: unknown key URI scheme %q (supported: a PEM file path, %s)",
			ref, scheme, strings.Join(linked, ", "))
	}
	sv, err := kms.Get(ctx, ref, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("opening KMS signing key %s: %w", ref, err)
	}
	pub, err := sv.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("reading public key of KMS signing key %s: %w", ref, err)
	}
	ec, err := requireP256(pub)
	if err != nil {
		return nil, fmt.Errorf("KMS signing key %s: %w", ref, err)
	}
	return newSigner(ref, sv, ec)
}

func newSigner(ref string, sv signature.Signer, pub *ecdsa.PublicKey) (*Signer, error) {
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(pub)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: encoding public key: %w", ref, err)
	}
	hint, err := KeyHint(pub)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", ref, err)
	}
	return &Signer{ref: ref, sv: sv, pub: pub, pubPEM: pubPEM, hint: hint}, nil
}

// parsePrivateKeyPEM decodes the first PEM block of b: cosign's encrypted
// format, PKCS#8 or SEC 1. Only ECDSA P-256 keys are accepted. The
// password and the decrypted DER are cleared once parsed; the key itself
// then lives only in the returned value (Go's crypto cannot wipe that).
func parsePrivateKeyPEM(ctx context.Context, b []byte, password PasswordFunc) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block found; expected a cosign key (cosign generate-key-pair / ckvault keygen) or a PKCS#8 PEM key")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case SigstorePrivateKeyPEMType, CosignPrivateKeyPEMType:
		if password == nil {
			password = PasswordFromEnv()
		}
		pw, perr := password()
		if perr != nil {
			return nil, perr
		}
		der, derr := decryptSealed(ctx, block.Bytes, pw)
		clear(pw)
		if rej := (*rejectedError)(nil); errors.As(derr, &rej) {
			// Decryption fails the same way for a wrong password and a
			// damaged file (secretbox authentication). Never echo the
			// password.
			return nil, fmt.Errorf("decrypting %s: wrong password or damaged key file (set $%s or signing.passwordFile): %w",
				block.Type, PasswordEnv, derr)
		} else if derr != nil {
			return nil, fmt.Errorf("decrypting %s: %w", block.Type, derr)
		}
		key, err = x509.ParsePKCS8PrivateKey(der)
		clear(der)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block type %q; expected %q, %q, \"PRIVATE KEY\" or \"EC PRIVATE KEY\"",
			block.Type, SigstorePrivateKeyPEMType, CosignPrivateKeyPEMType)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, unsupportedKeyError(key)
	}
	if _, err := requireP256(&ec.PublicKey); err != nil {
		return nil, err
	}
	return ec, nil
}

func unsupportedKeyError(key any) error {
	return fmt.Errorf("unsupported key type %T: ckvault signs precomputed SHA-256 digests and needs an ECDSA P-256 key (Ed25519 cannot sign a SHA-256 digest); create one with `ckvault keygen` or `cosign generate-key-pair`", key)
}

// requireP256 checks that pub is an ECDSA P-256 public key.
func requireP256(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, unsupportedKeyError(pub)
	}
	if ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("unsupported ECDSA curve %s: ckvault signs SHA-256 digests with P-256 keys only (what cosign verifies with SHA-256)", ec.Curve.Params().Name)
	}
	return ec, nil
}

// KeyHint is the lookup hint of a public key: the standard base64 of the
// SHA-256 of its DER SubjectPublicKeyInfo, as sigstore-go writes it into a
// bundle's verificationMaterial.publicKey.hint. A hint only selects which
// trusted key to try first; it is never trusted.
func KeyHint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}

// SignDigest signs the precomputed SHA-256 digest of an artifact and
// returns the ASN.1 DER ECDSA signature.
func (s *Signer) SignDigest(ctx context.Context, digest [32]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sig, err := s.sv.SignMessage(nil,
		options.WithDigest(digest[:]),
		options.WithCryptoSignerOpts(crypto.SHA256),
		options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("signing with %s: %w", s.ref, err)
	}
	return sig, nil
}

// Sign signs digest and returns both detached forms.
func (s *Signer) Sign(ctx context.Context, digest [32]byte) (Signature, error) {
	sig, err := s.SignDigest(ctx, digest)
	if err != nil {
		return Signature{}, err
	}
	bundle, err := MarshalBundle(digest, sig, s.hint)
	if err != nil {
		return Signature{}, err
	}
	return Signature{Sig: EncodeSig(sig), Bundle: bundle}, nil
}

// PublicKeyPEM returns the PEM ("PUBLIC KEY") of the signing key, the form
// `cosign verify-blob --key` and TrustedKeys read.
func (s *Signer) PublicKeyPEM() []byte { return bytes.Clone(s.pubPEM) }

// PublicKey returns the public half of the signing key.
func (s *Signer) PublicKey() *ecdsa.PublicKey { return s.pub }

// KeyHint returns the signing key's hint (see the package function KeyHint).
func (s *Signer) KeyHint() string { return s.hint }

// String names the key by its reference and hint, never its material.
func (s *Signer) String() string { return s.ref + " (" + s.hint + ")" }

// GenerateKeyPair creates an ECDSA P-256 signing key and returns it in
// cosign's encrypted PEM format (ENCRYPTED SIGSTORE PRIVATE KEY: PKCS#8
// sealed with scrypt + NaCl secretbox by go-securesystemslib, the same
// library and parameters cosign uses) and its public key PEM. `cosign
// sign-blob --key` reads the private key with COSIGN_PASSWORD set to
// password; an empty password is allowed, as in cosign.
func GenerateKeyPair(password []byte) (privatePEM, publicPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding signing key: %w", err)
	}
	if password == nil {
		password = []byte{}
	}
	sealed, err := encrypted.Encrypt(der, password)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypting signing key: %w", err)
	}
	clear(der)
	publicPEM, err = cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("encoding public key: %w", err)
	}
	privatePEM = pem.EncodeToMemory(&pem.Block{Type: SigstorePrivateKeyPEMType, Bytes: sealed})
	return privatePEM, publicPEM, nil
}
