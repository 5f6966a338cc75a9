package restore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// PushOptions tune Push.
type PushOptions struct {
	// Keychain finds the registry's credentials; nil means
	// authn.DefaultKeychain (the user's docker config: ~/.docker/config.json
	// or $DOCKER_CONFIG, and its credential helpers).
	Keychain authn.Keychain
	// RootCAs verify the registry's certificate; nil means the system's.
	RootCAs *x509.CertPool
	// AllowHTTP permits a registry without TLS. The image holds plaintext
	// memory, so this is for a registry on a trusted host only.
	AllowHTTP bool
	// Progress, if set, is called with the bytes uploaded so far and the
	// total.
	Progress func(done, total int64)
	// UserAgent names the client to the registry.
	UserAgent string
}

// Result says where an image went.
type Result struct {
	// Registry and Repository are where it was pushed ("" for a layout);
	// Tag is the tag it was pushed or written under.
	Registry, Repository, Tag string
	// Layout is the OCI layout directory, for WriteLayout.
	Layout string
	// Digest is the index's digest: what REF resolves to. Pinned is
	// REGISTRY/REPOSITORY@DIGEST, the reference to use in a pod spec.
	Digest v1.Hash
	Pinned string
	// Manifest is the image manifest's digest; Layer the archive layer's
	// (the archive's SHA-256) and LayerSize its size.
	Manifest, Layer v1.Hash
	LayerSize       int64
}

// AuditDetail is what the audit trail records about a result.
func (r Result) AuditDetail() map[string]string {
	d := map[string]string{
		"imageDigest":    r.Digest.String(),
		"manifestDigest": r.Manifest.String(),
		"layerDigest":    r.Layer.String(),
		"tag":            r.Tag,
	}
	if r.Layout != "" {
		d["ociLayout"] = r.Layout
	} else {
		d["registry"], d["repository"], d["image"] = r.Registry, r.Repository, r.Pinned
	}
	return d
}

// ErrPlainHTTP: the registry would have been reached without TLS.
var ErrPlainHTTP = errors.New("refusing to send a checkpoint image over plain HTTP")

// ParseReference parses REF as given to `ckvault restore --image`. A REF
// without a tag gets "latest", as docker does; a REF by digest is refused,
// since the digest of the image is only known once it is built.
func ParseReference(ref string, allowHTTP bool) (name.Tag, error) {
	var opts []name.Option
	if allowHTTP {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %q: %w; give REGISTRY/REPOSITORY[:TAG]", ref, err)
	}
	t, ok := r.(name.Tag)
	if !ok {
		return name.Tag{}, fmt.Errorf("image reference %q names a digest; give a tag (REGISTRY/REPOSITORY:TAG): the digest is known only once the image is built", ref)
	}
	return t, nil
}

// Push uploads the image index idx (from Build) to the registry as ref,
// over TLS with a verified certificate unless opts.AllowHTTP. The layer
// streams from the archive (bounded memory whatever its size); the
// registry checks its digest, and so does the layer's own reader.
func Push(ctx context.Context, idx v1.ImageIndex, ref name.Tag, opts PushOptions) (Result, error) {
	res, err := describe(idx)
	if err != nil {
		return res, err
	}
	res.Registry, res.Repository, res.Tag = ref.RegistryStr(), ref.RepositoryStr(), ref.TagStr()
	res.Pinned = ref.Context().Digest(res.Digest.String()).String()

	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	base := remote.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: opts.RootCAs}
	guard := &guardTransport{next: base, allowHTTP: opts.AllowHTTP}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(guard),
	}
	if opts.UserAgent != "" {
		ropts = append(ropts, remote.WithUserAgent(opts.UserAgent))
	}
	var progressDone chan struct{}
	if opts.Progress != nil {
		ch := make(chan v1.Update, 16)
		progressDone = make(chan struct{})
		go func() {
			defer close(progressDone)
			for u := range ch {
				if u.Error == nil {
					opts.Progress(u.Complete, u.Total)
				}
			}
		}()
		ropts = append(ropts, remote.WithProgress(ch))
	}
	err = remote.WriteIndex(ref, idx, ropts...)
	if progressDone != nil {
		<-progressDone // remote closes the channel when it is done
	}
	if err != nil {
		// go-containerregistry tries https and http side by side for a
		// registry on loopback or a private address, and reports both
		// failures in one string; say which one to fix.
		if terr := guard.certError(); terr != nil {
			return res, fmt.Errorf("%w: %s: %v; if the registry's certificate is signed by a private CA, pass it with --registry-ca", ErrTLS, res.Registry, terr)
		}
		if guard.refused.Load() {
			return res, fmt.Errorf("%w to %s (the image holds the checkpoint's memory in plaintext): use a registry with TLS, or pass --allow-http for a registry on a trusted host (%v)", ErrPlainHTTP, res.Registry, err)
		}
		return res, fmt.Errorf("pushing %s: %w", ref, err)
	}
	return res, nil
}

// ErrTLS: the registry's certificate could not be verified.
var ErrTLS = errors.New("cannot verify the registry's TLS certificate")

// describe fills in the digests of idx.
func describe(idx v1.ImageIndex) (Result, error) {
	var res Result
	var err error
	if res.Digest, err = idx.Digest(); err != nil {
		return res, fmt.Errorf("computing the image index digest: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		return res, fmt.Errorf("reading back the image index: %v (%d manifests)", err, len(im.Manifests))
	}
	res.Manifest = im.Manifests[0].Digest
	img, err := idx.Image(res.Manifest)
	if err != nil {
		return res, fmt.Errorf("reading back the image: %w", err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		return res, fmt.Errorf("reading back the image's layers: %v", err)
	}
	if res.Layer, err = layers[0].Digest(); err != nil {
		return res, err
	}
	if res.LayerSize, err = layers[0].Size(); err != nil {
		return res, err
	}
	return res, nil
}

// guardTransport refuses every request that is not HTTPS unless allowHTTP
// (go-containerregistry tries plain HTTP by itself for registries on
// loopback and private addresses; this is where that stops), and keeps the
// first certificate verification failure for the error message.
type guardTransport struct {
	next      http.RoundTripper
	allowHTTP bool
	refused   atomic.Bool
	mu        sync.Mutex
	tlsErr    error
}

func (t *guardTransport) certError() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tlsErr
}

func (t *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !t.allowHTTP {
		t.refused.Store(true)
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%w: %s", ErrPlainHTTP, req.URL.Redacted())
	}
	resp, err := t.next.RoundTrip(req)
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	if err != nil && (errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)) {
		t.mu.Lock()
		if t.tlsErr == nil {
			t.tlsErr = err
		}
		t.mu.Unlock()
	}
	return resp, err
}
