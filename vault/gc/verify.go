package gc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// errTransient marks a store failure while verifying: the run stops rather
// than report a healthy checkpoint as unverified.
var errTransient = errors.New("store error")

// readError says what a failed read of one of base's small objects means:
// a store error (transient: the run stops before deleting anything), or an
// object too large to be genuine (*store.TooLargeError). That is what the
// object is, not a failure of the store, so it is a problem of its own
// base (reported, kept) and never stops the run: a node may write any
// bytes under its own keys, and must not be able to stop retention for
// the whole vault.
func readError(base string, err error) error {
	if errors.As(err, new(*store.TooLargeError)) {
		return fmt.Errorf("%s: %v; GC keeps the checkpoint (it deletes only what it verified)", base, err)
	}
	return fmt.Errorf("%w: %v", errTransient, err)
}

// verifyManifest checks the manifest of base as docs/FORMAT.md prescribes
// (signature over the exact bytes under a trusted key, strict parse, key
// binding), through manifest.Verify. Only a verified manifest's identity,
// time and size decide what GC deletes.
func verifyManifest(ctx context.Context, st store.Store, trusted *signing.TrustedKeys, base string) (*manifest.Manifest, error) {
	objs := manifest.ObjectsFor(base)
	mb, err := store.ReadSmall(ctx, st, objs.Manifest, manifest.MaxSize)
	if err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return nil, fmt.Errorf("%s: manifest vanished while GC ran", base)
		}
		return nil, readError(base, err)
	}
	var sig []byte
	for _, k := range []string{objs.ManifestSig, objs.ManifestBundle} {
		b, err := store.ReadSmall(ctx, st, k, manifest.MaxSignatureSize)
		if errors.Is(err, store.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, readError(base, err)
		}
		sig = b
		break
	}
	if sig == nil {
		return nil, fmt.Errorf("%s: manifest is unsigned (neither %s nor %s exists)", base, objs.ManifestSig, objs.ManifestBundle)
	}
	return manifest.Verify(mb, sig, trusted, base)
}

// intent is the body of an intent object.
type intent struct {
	Base   string    `json:"base"`
	Policy string    `json:"policy"`
	Limit  string    `json:"limit"`
	Reason string    `json:"reason"`
	Actor  string    `json:"actor"`
	Time   time.Time `json:"time"`
}

const maxIntentSize = 16 << 10

// readIntent reads and checks an intent object: it must name the base key
// its own key is derived from, so an intent cannot point GC elsewhere.
func readIntent(ctx context.Context, st store.Store, key string) (*intent, error) {
	b, err := store.ReadSmall(ctx, st, key, maxIntentSize)
	if err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return nil, fmt.Errorf("intent %s vanished while GC ran", key)
		}
		if errors.As(err, new(*store.TooLargeError)) {
			return nil, fmt.Errorf("intent %s: %v, so it is no intent GC wrote; ignored (check who wrote it, then remove it)", key, err)
		}
		return nil, fmt.Errorf("%w: %v", errTransient, err)
	}
	in, err := parseIntent(b)
	if err != nil {
		return nil, fmt.Errorf("intent %s: %v; remove it once you have checked the objects it names", key, err)
	}
	if IntentKey(in.Base) != key && legacyIntentKey(in.Base) != key {
		return nil, fmt.Errorf("intent %s names base %q, which is not its own; ignored (remove it)", key, in.Base)
	}
	return in, nil
}

// parseIntent decodes an intent strictly.
func parseIntent(b []byte) (*intent, error) {
	var in intent
	dec := json.NewDecoder(bytesReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("not a GC intent: %v", err)
	}
	if dec.More() {
		return nil, errors.New("not a GC intent: data after the object")
	}
	if _, ok := manifest.ParseKey(in.Base); !ok || store.ValidKey(in.Base) != nil {
		return nil, fmt.Errorf("base %q is not a checkpoint's base key (docs/FORMAT.md)", in.Base)
	}
	return &in, nil
}
