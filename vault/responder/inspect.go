package responder

import (
	"context"
	"fmt"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// Inspection is what a vaulted checkpoint holds.
type Inspection struct {
	ID     string
	Object string
	// Manifest is the verified manifest.
	Manifest *manifest.Manifest
	// Info is what the decrypted archive says about itself.
	Info *checkpoint.Info
	// Verified is true when every check passed (always, unless
	// InspectOptions.AllowUnverified let an unverified archive through).
	Verified bool
	// Problem is the failed check when Verified is false.
	Problem error
}

// InspectOptions tune Inspect.
type InspectOptions struct {
	FetchOptions
	// AllowUnverified returns what the parser saw even when the
	// ciphertext or plaintext check failed (Verified false, Problem set),
	// for forensics on a damaged object. The manifest must still verify.
	AllowUnverified bool
	// Limits bound the archive parser (defaults as in checkpoint.Limits).
	Limits checkpoint.Limits
}

// Inspect decrypts the vaulted checkpoint id in memory only — the plaintext
// streams through the archive parser and is never written anywhere — and
// reports what it holds: identity, engine, runtime, image, times, memory and
// rootfs-diff sizes and the member list. The same checks as Fetch run;
// a failure refuses the result unless opts.AllowUnverified. It is recorded
// in the audit trail.
func (r *Responder) Inspect(ctx context.Context, id string, opts InspectOptions) (*Inspection, error) {
	base, err := r.resolveAudited(ctx, "inspected", id)
	if err != nil {
		return nil, err
	}
	ins := &Inspection{ID: idOf(base), Object: base}
	err = r.audited(ctx, "inspected", base, nil, func(ctx context.Context) (map[string]string, error) {
		m, _, err := r.verifiedManifest(ctx, base)
		if err != nil {
			return nil, err
		}
		ins.Manifest = m
		parser := checkpoint.NewInspector(opts.Limits)
		derr := r.decrypt(ctx, m, opts.Identities, parser, progressFunc(opts.Progress, m.Ciphertext.Size))
		info, perr := parser.Finish()
		if derr != nil {
			// A parser that stopped early makes the sink fail; the
			// parser's own verdict is the more precise one.
			if _, ok := derr.(*sinkError); ok && perr != nil {
				derr = &CheckError{Check: CheckArchive, Object: base, Err: perr}
			}
			if !opts.AllowUnverified || IsWrongIdentity(derr) {
				return nil, derr
			}
			ins.Problem = derr
			if perr == nil {
				ins.Info = info
			}
			return map[string]string{"verified": "false"}, nil
		}
		if perr != nil {
			// Verified content that is not a checkpoint the parser
			// accepts: the vault's writer admitted it, so this is news.
			return nil, &CheckError{Check: CheckArchive, Object: base, Err: perr}
		}
		ins.Info, ins.Verified = info, true
		return map[string]string{"verified": "true", "members": fmt.Sprint(info.MemberCount)}, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return ins, nil
}
