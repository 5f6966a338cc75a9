package responder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// MinIDLen is the shortest id prefix accepted, so that a typo of one or
// two characters cannot select a checkpoint by accident.
const MinIDLen = 4

// Entry is one vaulted checkpoint as List found it.
type Entry struct {
	// ID is the short id: the last component of the base key (12 hex
	// digits derived from the checkpoint, see docs/FORMAT.md), stable for
	// the life of the object. A unique prefix of it selects the entry.
	ID string
	// Base is the base key.
	Base string
	// Manifest is the verified manifest; nil when Problem is set.
	Manifest *manifest.Manifest
	// Problem says why the entry could not be verified: a missing,
	// unsigned, tampered or replayed manifest. Such entries are listed,
	// never dropped: they are exactly what a responder must see.
	Problem error
	// Key is what the base key itself says (unverified); it is what
	// filters and sorting use when Manifest is nil.
	Key KeyParts
}

// KeyParts are the components of a base key (manifest.ParseKey).
type KeyParts = manifest.KeyParts

// ParseBaseKey splits a base key into its components; see manifest.ParseKey.
func ParseBaseKey(base string) (KeyParts, bool) { return manifest.ParseKey(base) }

// idOf is the id of a base key: its short id, or the whole key when it
// does not have the format's shape (so it is still listed and selectable).
func idOf(base string) string {
	if p, ok := ParseBaseKey(base); ok {
		return p.ShortID
	}
	return base
}

// Namespace, Pod, Container, Node and Checkpointed return the verified
// manifest's values, or the key's when there is no verified manifest.
func (e *Entry) Namespace() string {
	if e.Manifest != nil {
		return e.Manifest.Namespace
	}
	return e.Key.Namespace
}

func (e *Entry) Pod() string {
	if e.Manifest != nil {
		return e.Manifest.Pod
	}
	return e.Key.Pod
}

func (e *Entry) Container() string {
	if e.Manifest != nil {
		return e.Manifest.Container
	}
	return e.Key.Container
}

func (e *Entry) Node() string {
	if e.Manifest != nil {
		return e.Manifest.Node
	}
	return e.Key.Node
}

func (e *Entry) Checkpointed() time.Time {
	if e.Manifest != nil {
		return e.Manifest.CheckpointedAt.Time
	}
	return e.Key.Checkpointed
}

// ListOptions filter List. Empty fields match everything.
type ListOptions struct {
	Namespace, Pod, Container, Node string
	// Since is inclusive, Until exclusive; zero is unbounded. They apply
	// to the checkpoint time.
	Since, Until time.Time
}

func (o ListOptions) prefix() string {
	if o.Namespace == "" {
		return ""
	}
	p := o.Namespace + "/"
	if o.Pod != "" {
		p += o.Pod + "/"
		if o.Container != "" {
			p += o.Container + "/"
		}
	}
	return p
}

func (o ListOptions) match(e *Entry) bool {
	t := e.Checkpointed()
	return (o.Namespace == "" || e.Namespace() == o.Namespace) &&
		(o.Pod == "" || e.Pod() == o.Pod) &&
		(o.Container == "" || e.Container() == o.Container) &&
		(o.Node == "" || e.Node() == o.Node) &&
		(o.Since.IsZero() || !t.Before(o.Since)) &&
		(o.Until.IsZero() || t.Before(o.Until))
}

// List returns the vaulted checkpoints matching opts, newest first. Every
// manifest is verified (signature, form, key binding); entries that fail
// are returned with Problem set. It is recorded in the audit trail.
func (r *Responder) List(ctx context.Context, opts ListOptions) ([]Entry, error) {
	var out []Entry
	subject := r.Store.Describe()
	if p := opts.prefix(); p != "" {
		subject += " " + p
	}
	err := r.audited(ctx, "listed", subject, nil, func(ctx context.Context) (map[string]string, error) {
		bases, err := r.scan(ctx, opts.prefix())
		if err != nil {
			return nil, err
		}
		out = r.load(ctx, bases)
		kept := out[:0]
		bad := 0
		for i := range out {
			if opts.match(&out[i]) {
				kept = append(kept, out[i])
				if out[i].Problem != nil {
					bad++
				}
			}
		}
		out = kept
		sort.SliceStable(out, func(i, j int) bool {
			ti, tj := out[i].Checkpointed(), out[j].Checkpointed()
			if !ti.Equal(tj) {
				return ti.After(tj)
			}
			return out[i].Base < out[j].Base
		})
		return map[string]string{"entries": fmt.Sprint(len(out)), "unverified": fmt.Sprint(bad)}, ctx.Err()
	}, nil)
	return out, err
}

// scan lists every base key under prefix, with the suffixes present.
func (r *Responder) scan(ctx context.Context, prefix string) (map[string]map[string]bool, error) {
	bases := map[string]map[string]bool{}
	after := ""
	for {
		objs, next, err := r.Store.List(ctx, prefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", r.Store.Describe(), err)
		}
		for _, o := range objs {
			base, ok := manifest.BaseKeyOf(o.Key)
			if !ok {
				continue // not a checkpoint object (audit segments, debris)
			}
			if bases[base] == nil {
				bases[base] = map[string]bool{}
			}
			bases[base][o.Key[len(base):]] = true
		}
		if next == "" || len(objs) == 0 {
			return bases, nil
		}
		after = next
	}
}

// load verifies the manifest of every base, a few at a time.
func (r *Responder) load(ctx context.Context, bases map[string]map[string]bool) []Entry {
	out := make([]Entry, 0, len(bases))
	for b, sfx := range bases {
		e := Entry{ID: idOf(b), Base: b}
		e.Key, _ = ParseBaseKey(b)
		if !sfx[manifest.SuffixManifest] {
			e.Problem = fmt.Errorf("incomplete: %s has no manifest (an upload in progress or interrupted)", b)
		}
		out = append(out, e)
	}
	n := r.Concurrency
	if n <= 0 {
		n = 8
	}
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i := range out {
		if out[i].Problem != nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(e *Entry) {
			defer wg.Done()
			defer func() { <-sem }()
			e.Manifest, e.Problem = r.manifest(ctx, e.Base)
		}(&out[i])
	}
	wg.Wait()
	return out
}

// Resolve maps an id — a unique prefix of a short id (at least MinIDLen
// characters), a full base key, or an object name — to a base key. It
// looks only at object names; nothing is verified.
func (r *Responder) Resolve(ctx context.Context, id string) (string, error) {
	id = strings.TrimSpace(id)
	if b, ok := manifest.BaseKeyOf(id); ok {
		id = b
	}
	if strings.Contains(id, "/") {
		// A base key: look under its directory only.
		dir := id[:strings.LastIndexByte(id, '/')+1]
		bases, err := r.scan(ctx, dir)
		if err != nil {
			return "", err
		}
		if _, ok := bases[id]; ok {
			return id, nil
		}
		return "", fmt.Errorf("%w: %s is not in %s; run `ckvault list`", ErrNotFound, id, r.Store.Describe())
	}
	if len(id) < MinIDLen {
		return "", fmt.Errorf("id %q is too short: give at least %d characters of an id from `ckvault list`", id, MinIDLen)
	}
	bases, err := r.scan(ctx, "")
	if err != nil {
		return "", err
	}
	var match []string
	for b := range bases {
		if strings.HasPrefix(idOf(b), id) {
			match = append(match, b)
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("%w: no id starts with %q in %s; run `ckvault list`", ErrNotFound, id, r.Store.Describe())
	case 1:
		return match[0], nil
	}
	sort.Strings(match)
	cand := make([]string, len(match))
	for i, b := range match {
		cand[i] = idOf(b) + "  " + b
	}
	return "", &AmbiguousError{ID: id, Candidates: cand}
}

// resolveAudited is Resolve for an operation that will read the vault:
// a request for an id that does not resolve (unknown, ambiguous) is
// recorded as well, with the id as given as its subject.
func (r *Responder) resolveAudited(ctx context.Context, action, id string) (string, error) {
	base, err := r.Resolve(ctx, id)
	if err == nil {
		return base, nil
	}
	return "", r.audited(ctx, action, clip(fmt.Sprintf("id:%q", id)), nil, func(context.Context) (map[string]string, error) { return nil, err }, nil)
}

// manifest fetches and verifies the manifest of base: FORMAT.md steps 1–3.
// Both signature forms are checked when both are present; at least one
// must be. Failures are *CheckError.
func (r *Responder) manifest(ctx context.Context, base string) (*manifest.Manifest, error) {
	objs := manifest.ObjectsFor(base)
	mb, err := store.ReadSmall(ctx, r.Store, objs.Manifest, manifest.MaxSize)
	if errors.Is(err, store.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no manifest (%s)", ErrNotFound, base, objs.Manifest)
	}
	if errors.As(err, new(*store.TooLargeError)) {
		return nil, &CheckError{Check: CheckManifest, Object: base, Err: err}
	}
	if err != nil {
		return nil, err
	}
	sigs, err := r.signatures(ctx, base, objs.ManifestSig, objs.ManifestBundle, CheckManifestSignature)
	if err != nil {
		return nil, err
	}
	return VerifyManifest(r.Trusted, base, mb, sigs)
}

// VerifyManifest runs FORMAT.md steps 1–3 on the bytes of base's manifest
// and its signatures (the .manifest.sig and .manifest.sigstore.json forms
// that exist, in that order; at least one): every signature under a trusted
// key, the manifest's form, and that it names base. Failures are
// *CheckError. The vault service's index uses it on what it reads from the
// store; clients still verify for themselves.
func VerifyManifest(trusted *signing.TrustedKeys, base string, mb []byte, sigs [][]byte) (*manifest.Manifest, error) {
	if len(sigs) == 0 {
		return nil, &CheckError{Check: CheckManifestSignature, Object: base, Err: errors.New("the manifest is unsigned")}
	}
	m, err := manifest.Verify(mb, sigs[0], trusted, base)
	if err != nil {
		return nil, classify(base, err)
	}
	for _, s := range sigs[1:] {
		if _, err := verifySig(trusted, sha256.Sum256(mb), s); err != nil {
			return nil, &CheckError{Check: CheckManifestSignature, Object: base,
				Err: fmt.Errorf("%s: %w", manifest.ObjectsFor(base).ManifestBundle, err)}
		}
	}
	return m, nil
}

// signatures reads the .sig and the bundle form of one signature (the
// present ones, .sig first). Neither present is a failed check.
func (r *Responder) signatures(ctx context.Context, base, sigKey, bundleKey, check string) ([][]byte, error) {
	var out [][]byte
	for _, k := range []string{sigKey, bundleKey} {
		b, err := store.ReadSmall(ctx, r.Store, k, manifest.MaxSignatureSize)
		if errors.Is(err, store.ErrNotExist) {
			continue
		}
		if err != nil {
			if errors.As(err, new(*store.TooLargeError)) {
				return nil, &CheckError{Check: check, Object: base, Err: err}
			}
			return nil, err
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, &CheckError{Check: check, Object: base,
			Err: fmt.Errorf("neither %s nor %s exists: the object is unsigned", sigKey, bundleKey)}
	}
	return out, nil
}

func verifySig(t *signing.TrustedKeys, digest [32]byte, sig []byte) (string, error) {
	if s := bytes.TrimSpace(sig); len(s) > 0 && s[0] == '{' {
		return t.VerifyBundle(digest, sig)
	}
	return t.VerifyDigest(digest, sig)
}

// classify names the check a manifest.Verify error comes from.
func classify(base string, err error) error {
	check := CheckManifest
	switch {
	case errors.Is(err, signing.ErrBadSignature), errors.Is(err, signing.ErrUntrustedKey),
		errors.Is(err, signing.ErrDigestMismatch), errors.Is(err, signing.ErrMalformed):
		check = CheckManifestSignature
	case errors.Is(err, manifest.ErrKeyMismatch):
		check = CheckKeyBinding
	}
	return &CheckError{Check: check, Object: base, Err: err}
}
