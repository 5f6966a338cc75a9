package signing

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// TrustedKeys is the set of public keys whose signatures a verifier
// accepts. Several keys allow rotation: objects signed by a retired key
// verify as long as its public key stays in the set.
type TrustedKeys struct {
	keys []trustedKey
}

type trustedKey struct {
	pub  *ecdsa.PublicKey
	hint string
}

// ParseTrustedKeys parses PEM data, each argument holding one or more
// "PUBLIC KEY" blocks (the form of signing.pub and cosign.pub). Every key
// must be ECDSA P-256. Duplicates are kept once.
func ParseTrustedKeys(pemBlocks ...[]byte) (*TrustedKeys, error) {
	t := &TrustedKeys{}
	for i, data := range pemBlocks {
		if err := t.add(data); err != nil {
			return nil, fmt.Errorf("trusted key input %d: %w", i+1, err)
		}
	}
	if len(t.keys) == 0 {
		return nil, errors.New("no trusted public keys given; list the signing public key(s) in signing.publicKey")
	}
	return t, nil
}

// LoadTrustedKeys reads ParseTrustedKeys' input from files.
func LoadTrustedKeys(paths ...string) (*TrustedKeys, error) {
	t := &TrustedKeys{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("loading trusted public key: %w", err)
		}
		if err := t.add(b); err != nil {
			return nil, fmt.Errorf("loading trusted public key %s: %w", p, err)
		}
	}
	if len(t.keys) == 0 {
		return nil, errors.New("no trusted public keys given; list the signing public key(s) in signing.publicKey")
	}
	return t, nil
}

func (t *TrustedKeys) add(data []byte) error {
	rest := bytes.TrimSpace(data)
	n := 0
	for len(rest) > 0 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return errors.New("data after the PEM blocks is not PEM")
		}
		if block.Type != "PUBLIC KEY" {
			return fmt.Errorf("PEM block %q is not a \"PUBLIC KEY\" (a private key or certificate must not be listed as a trusted key)", block.Type)
		}
		p, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return fmt.Errorf("parsing PEM public key: %w", err)
		}
		n++
		rest = bytes.TrimSpace(rest)
		ec, err := requireP256(p)
		if err != nil {
			return err
		}
		hint, err := KeyHint(ec)
		if err != nil {
			return err
		}
		if t.byHint(hint) == nil {
			t.keys = append(t.keys, trustedKey{pub: ec, hint: hint})
		}
	}
	if n == 0 {
		return errors.New("no PEM public key found")
	}
	return nil
}

// Hints returns the hints of the trusted keys, in the order given.
func (t *TrustedKeys) Hints() []string {
	h := make([]string, len(t.keys))
	for i, k := range t.keys {
		h[i] = k.hint
	}
	return h
}

func (t *TrustedKeys) byHint(hint string) *trustedKey {
	for i := range t.keys {
		if t.keys[i].hint == hint {
			return &t.keys[i]
		}
	}
	return nil
}

// verifyAny returns the hint of the first trusted key under which der is a
// valid signature of digest, or "".
func (t *TrustedKeys) verifyAny(digest []byte, der []byte) string {
	for _, k := range t.keys {
		if ecdsa.VerifyASN1(k.pub, digest, der) {
			return k.hint
		}
	}
	return ""
}

// VerifyDigest checks a ".sig" file (base64 DER ECDSA signature) over the
// SHA-256 digest of an artifact against every trusted key, and returns the
// hint of the key that signed. A .sig carries no key hint, so a signature
// by an untrusted key and a damaged signature look the same: ErrBadSignature.
func (t *TrustedKeys) VerifyDigest(digest [32]byte, sigFile []byte) (hint string, err error) {
	der, err := DecodeSig(sigFile)
	if err != nil {
		return "", err
	}
	if h := t.verifyAny(digest[:], der); h != "" {
		return h, nil
	}
	return "", fmt.Errorf("%w: the signature does not verify under any of the %d trusted keys (damaged, over other data, or made by an untrusted key)", ErrBadSignature, len(t.keys))
}

// VerifyDigestDER is VerifyDigest for a raw ASN.1 DER signature, the form
// Signer.SignDigest returns, instead of the base64 text of a ".sig" file.
func (t *TrustedKeys) VerifyDigestDER(digest [32]byte, der []byte) (hint string, err error) {
	if len(der) == 0 {
		return "", fmt.Errorf("%w: empty signature", ErrMalformed)
	}
	if h := t.verifyAny(digest[:], der); h != "" {
		return h, nil
	}
	return "", fmt.Errorf("%w: the signature does not verify under any of the %d trusted keys (damaged, over other data, or made by an untrusted key)", ErrBadSignature, len(t.keys))
}

// DERVerifier is a TrustedKeys whose VerifyDigest takes raw DER signatures
// (VerifyDigestDER). Its method set is that of audit.HeadVerifier: the audit
// log's signed heads carry the raw DER that a *Signer, used as the log's
// audit.HeadSigner, makes. Every reader of the trail (the daemon, `ckvault
// audit verify`, the store reader) verifies heads through it, so that they
// agree on the form; this package need not import audit for that.
type DERVerifier struct{ keys *TrustedKeys }

// DER returns t as a DERVerifier.
func (t *TrustedKeys) DER() DERVerifier { return DERVerifier{t} }

// VerifyDigest returns the hint of the trusted key that made the DER
// signature sig over digest (see VerifyDigestDER).
func (v DERVerifier) VerifyDigest(digest [32]byte, sig []byte) (hint string, err error) {
	if v.keys == nil {
		return "", errors.New("no trusted keys to verify the signature with: set signing.publicKey in the config")
	}
	return v.keys.VerifyDigestDER(digest, sig)
}

// VerifyBundle checks a ".sigstore.json" bundle against the SHA-256 digest
// the caller computed from the artifact, in this order: the bundle parses
// strictly (ErrMalformed); its messageDigest equals digest
// (ErrDigestMismatch); its signature verifies under the trusted key its
// hint names, or, when the hint is absent or unknown, under any trusted key
// (ErrBadSignature, or ErrUntrustedKey when the hint names no trusted key).
// The hint is only a lookup aid. It returns the hint of the verifying key.
func (t *TrustedKeys) VerifyBundle(digest [32]byte, bundleJSON []byte) (hint string, err error) {
	b, err := parseBundle(bundleJSON)
	if err != nil {
		return "", err
	}
	// The digest is public, but constant time costs nothing here.
	if subtle.ConstantTimeCompare(b.digest, digest[:]) != 1 {
		return "", fmt.Errorf("%w: the bundle signs SHA-256 %x, the artifact's is %x", ErrDigestMismatch, b.digest, digest[:])
	}
	if k := t.byHint(b.hint); k != nil {
		if ecdsa.VerifyASN1(k.pub, digest[:], b.sig) {
			return k.hint, nil
		}
		return "", fmt.Errorf("%w: the bundle signature does not verify under trusted key %s that it names", ErrBadSignature, k.hint)
	}
	if h := t.verifyAny(digest[:], b.sig); h != "" {
		return h, nil
	}
	if b.hint != "" {
		return "", fmt.Errorf("%w: the bundle names key %s, which is not among the %d trusted keys, and no trusted key verifies it", ErrUntrustedKey, b.hint, len(t.keys))
	}
	return "", fmt.Errorf("%w: the bundle signature does not verify under any of the %d trusted keys", ErrBadSignature, len(t.keys))
}
