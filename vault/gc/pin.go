package gc

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Pin places (on) or lifts (!on) a legal hold on every object of the
// checkpoint at base: its manifest, ciphertext and their signatures. A
// pinned checkpoint counts toward retention limits but is never deleted,
// and the store itself refuses to delete its held versions. The change is
// audited (intent before, outcome after; no intent record, no change).
//
// On S3 the hold is set on each object's current version; GC treats a
// hold on any version as a pin of the whole checkpoint.
// Holder is what Pin needs of a store: setting and lifting legal holds.
// store.Store implements it (a node's, the retention job's, or the vault
// service's store, whose credentials allow s3:PutObjectLegalHold).
type Holder interface {
	SetLegalHold(ctx context.Context, key string, on bool) error
	Describe() string
}

func Pin(ctx context.Context, st Holder, au Auditor, actor, base string, on bool) error {
	if au == nil {
		return errors.New("pin: no audit trail: pins are recorded, so this refuses to run without one")
	}
	action := ActionPinned
	if !on {
		action = ActionUnpin
	}
	ns, pod, ctr := keyIdentity(base)
	rec := audit.Record{Actor: actor, Action: action, Subject: base, Namespace: ns, Pod: pod, Container: ctr, Outcome: audit.OK}
	intentRec := rec
	intentRec.Detail = map[string]string{"phase": "intent"}
	if _, err := au.Append(ctx, intentRec); err != nil {
		return fmt.Errorf("%s %s: recording the request in the audit trail: %w; nothing was changed", action, base, err)
	}
	o := manifest.ObjectsFor(base)
	n := 0
	var firstErr error
	for _, k := range []string{o.Ciphertext, o.CiphertextSig, o.CiphertextBundle, o.Manifest, o.ManifestSig, o.ManifestBundle} {
		err := st.SetLegalHold(ctx, k, on)
		if errors.Is(err, store.ErrNotExist) {
			continue
		}
		if err != nil {
			if errors.Is(err, store.ErrUnsupported) {
				err = fmt.Errorf("%w: pins are legal holds, which need a bucket with Object Lock (or the file store)", err)
			}
			firstErr = err
			break
		}
		n++
	}
	if firstErr == nil && n == 0 {
		firstErr = fmt.Errorf("%s: no object of this checkpoint exists in %s: %w", base, st.Describe(), store.ErrNotExist)
	}
	out := rec
	out.Detail = map[string]string{"phase": "outcome", "objects": strconv.Itoa(n)}
	if firstErr != nil {
		out.Outcome = audit.Error
		out.Detail["error"] = clip(firstErr.Error())
	}
	if _, err := au.Append(context.WithoutCancel(ctx), out); err != nil && firstErr == nil {
		firstErr = fmt.Errorf("%s %s: the hold is changed, but recording the outcome failed: %w", action, base, err)
	}
	if firstErr != nil {
		return fmt.Errorf("%s %s: %w", action, base, firstErr)
	}
	return nil
}
