package signing

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// BundleMediaType is the media type of the bundles this package writes and
// the only one it accepts.
const BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// Signature is the two detached forms of one signature over one digest.
type Signature struct {
	// Sig is the content of the ".sig" file: base64 of the DER signature.
	Sig []byte
	// Bundle is the content of the ".sigstore.json" file.
	Bundle []byte
}

// EncodeSig returns the ".sig" file form of a DER signature: standard
// padded base64 without a trailing newline, as `cosign sign-blob` writes it.
func EncodeSig(der []byte) []byte {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(der)))
	base64.StdEncoding.Encode(out, der)
	return out
}

// DecodeSig parses a ".sig" file. Surrounding whitespace (a trailing
// newline from a text editor) is ignored; anything else that is not
// standard padded base64 is rejected.
func DecodeSig(sigFile []byte) ([]byte, error) {
	s := bytes.TrimSpace(sigFile)
	if len(s) == 0 {
		return nil, fmt.Errorf("%w: empty signature file", ErrMalformed)
	}
	// encoding/base64 silently skips CR and LF inside the input; a .sig is
	// one line, so refuse them rather than accept several encodings.
	if bytes.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("%w: signature file has more than one line", ErrMalformed)
	}
	der := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Strict().Decode(der, s)
	if err != nil {
		return nil, fmt.Errorf("%w: signature file is not base64: %v", ErrMalformed, err)
	}
	return der[:n], nil
}

// MarshalBundle builds the sigstore bundle v0.3 for a message signature
// over digest, naming the key by hint. The JSON is protojson's field set,
// re-indented with encoding/json so that the bytes do not depend on
// protojson's deliberately unstable whitespace.
func MarshalBundle(digest [32]byte, derSig []byte, hint string) ([]byte, error) {
	b := &protobundle.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_PublicKey{
				PublicKey: &protocommon.PublicKeyIdentifier{Hint: hint},
			},
		},
		Content: &protobundle.Bundle_MessageSignature{
			MessageSignature: &protocommon.MessageSignature{
				MessageDigest: &protocommon.HashOutput{
					Algorithm: protocommon.HashAlgorithm_SHA2_256,
					Digest:    digest[:],
				},
				Signature: derSig,
			},
		},
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encoding sigstore bundle: %w", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("encoding sigstore bundle: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// parsedBundle is what VerifyBundle needs from a bundle.
type parsedBundle struct {
	hint   string
	digest []byte
	sig    []byte
}

// parseBundle decodes bundleJSON strictly: unknown fields are rejected, the
// media type must be v0.3, the content a SHA-256 message signature and the
// verification material a public key.
func parseBundle(bundleJSON []byte) (*parsedBundle, error) {
	var b protobundle.Bundle
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("%w: bundle is not valid sigstore bundle JSON: %v", ErrMalformed, err)
	}
	if b.GetMediaType() != BundleMediaType {
		return nil, fmt.Errorf("%w: bundle media type %q, want %q", ErrMalformed, b.GetMediaType(), BundleMediaType)
	}
	ms := b.GetMessageSignature()
	if ms == nil {
		return nil, fmt.Errorf("%w: bundle has no messageSignature (DSSE envelopes are not used by ckvault)", ErrMalformed)
	}
	md := ms.GetMessageDigest()
	if md == nil || md.GetAlgorithm() != protocommon.HashAlgorithm_SHA2_256 || len(md.GetDigest()) != 32 {
		return nil, fmt.Errorf("%w: bundle messageDigest must be a 32-byte SHA2_256 digest", ErrMalformed)
	}
	if len(ms.GetSignature()) == 0 {
		return nil, fmt.Errorf("%w: bundle has an empty signature", ErrMalformed)
	}
	vm := b.GetVerificationMaterial()
	if vm == nil || vm.GetPublicKey() == nil {
		return nil, fmt.Errorf("%w: bundle verificationMaterial must be a publicKey (certificates are not trusted by ckvault)", ErrMalformed)
	}
	return &parsedBundle{hint: vm.GetPublicKey().GetHint(), digest: md.GetDigest(), sig: ms.GetSignature()}, nil
}

// Sentinel errors name the check that failed; test them with errors.Is.
var (
	// ErrMalformed: the signature or bundle cannot be decoded.
	ErrMalformed = errors.New("malformed signature")
	// ErrDigestMismatch: the bundle is for another artifact.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrUntrustedKey: the bundle names a key that is not trusted, and no
	// trusted key verifies the signature.
	ErrUntrustedKey = errors.New("untrusted signing key")
	// ErrBadSignature: no trusted key verifies the signature.
	ErrBadSignature = errors.New("bad signature")
)
