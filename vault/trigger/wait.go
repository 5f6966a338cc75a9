package trigger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Vaulted identifies a vaulted checkpoint.
type Vaulted struct {
	// ID is the short id (what `ckvault fetch ID` takes); Object the base
	// key.
	ID, Object string
	// Manifest is the verified manifest.
	Manifest *manifest.Manifest
}

// Finder looks in the vault for the checkpoint made from the archive name
// on node. It returns nil, nil while there is none.
type Finder interface {
	Find(ctx context.Context, t Target, node, name string) (*Vaulted, error)
}

// Trail reads the node daemon's audit trail (*audit.Log,
// *auditsock.Client).
type Trail interface {
	Query(ctx context.Context, f audit.Filter) (audit.Page, error)
}

// WaitOptions tune Wait.
type WaitOptions struct {
	Finder Finder
	// Trail, when the node daemon's trail is reachable, lets Wait report a
	// skipped or rejected archive at once, and a daemon that has not seen
	// the archive within DetectWithin (default 1m).
	Trail        Trail
	DetectWithin time.Duration
	// VaultWithin bounds the whole wait (default 10m).
	VaultWithin time.Duration
	// Interval between looks (default 1s).
	Interval time.Duration
}

// Errors of Wait.
var (
	ErrSkipped     = errors.New("the node daemon skips this archive")
	ErrRejected    = errors.New("the node daemon rejected the archive")
	ErrNotDetected = errors.New("the node daemon has not seen the archive")
	ErrNotVaulted  = errors.New("the archive was not vaulted in time")
)

// Wait returns the vaulted checkpoint of the archive name from node.
func Wait(ctx context.Context, o WaitOptions, t Target, node, name string) (*Vaulted, error) {
	if o.Finder == nil {
		return nil, errors.New("wait: no way to read the vault")
	}
	detect, within, every := o.DetectWithin, o.VaultWithin, o.Interval
	if detect == 0 {
		detect = time.Minute
	}
	if within == 0 {
		within = 10 * time.Minute
	}
	if every == 0 {
		every = time.Second
	}
	start := time.Now()
	for {
		v, err := o.Finder.Find(ctx, t, node, name)
		if err != nil {
			return nil, err
		}
		if v != nil {
			return v, nil
		}
		if o.Trail != nil {
			if err := daemonSays(ctx, o.Trail, name, node, time.Since(start) > detect, detect); err != nil {
				return nil, err
			}
		}
		if time.Since(start) > within {
			hint := "is `ckvault daemon` running on node " + node + "? (its audit trail cannot be read from here: run `ckvault audit query --subject " + name + "` on the node)"
			return nil, fmt.Errorf("%w: %s from node %s is not in the vault after %s; %s. Until it is vaulted the archive stays on the node in plaintext",
				ErrNotVaulted, name, node, within, hint)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(every):
		}
	}
}

// daemonSays reads the daemon's records about name and turns a skip, a
// rejection or (after the bound) silence into an error.
func daemonSays(ctx context.Context, tr Trail, name, node string, late bool, bound time.Duration) error {
	page, err := tr.Query(ctx, audit.Filter{Subject: name, Limit: 100, Newest: true})
	if err != nil {
		return fmt.Errorf("reading the node daemon's audit trail: %w", err)
	}
	detected := false
	for _, r := range page.Records {
		switch r.Action {
		case "skipped":
			return fmt.Errorf("%w: %s (%s); it stays on node %s in plaintext until the runtime's or the operator's cleanup removes it", ErrSkipped, name, r.Detail["reason"], node)
		case "rejected":
			return fmt.Errorf("%w: %s: %s", ErrRejected, name, r.Detail["reason"])
		case "detected":
			detected = true
		}
	}
	if !detected && late {
		return fmt.Errorf("%w: no \"detected\" record for %s within %s: is the daemon watching the kubelet's checkpoints directory on node %s?", ErrNotDetected, name, bound, node)
	}
	return nil
}

// StoreFinder finds a vaulted checkpoint by listing the keys under the
// container's prefix (cheap, and not an access to any checkpoint) and, for
// a key from the right node, reading and verifying the manifests there
// through the responder, which audits that read.
type StoreFinder struct {
	Store     store.Store
	Responder *responder.Responder
	seen      map[string]bool
}

// Find implements Finder.
func (f *StoreFinder) Find(ctx context.Context, t Target, node, name string) (*Vaulted, error) {
	if f.seen == nil {
		f.seen = map[string]bool{}
	}
	prefix := t.Namespace + "/" + t.Pod + "/" + t.Container + "/"
	fresh := false
	after := ""
	for {
		objs, next, err := f.Store.List(ctx, prefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("listing %s in the vault: %w", prefix, err)
		}
		for _, o := range objs {
			base, ok := strings.CutSuffix(o.Key, manifest.SuffixManifest)
			if !ok || f.seen[base] {
				continue
			}
			if kp, ok := responder.ParseBaseKey(base); ok && kp.Node == node {
				f.seen[base], fresh = true, true
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	if !fresh {
		return nil, nil
	}
	ents, err := f.Responder.List(ctx, responder.ListOptions{Namespace: t.Namespace, Pod: t.Pod, Container: t.Container, Node: node})
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if e.Manifest != nil && e.Manifest.OriginalName == name && e.Manifest.Node == node {
			return &Vaulted{ID: e.ID, Object: e.Base, Manifest: e.Manifest}, nil
		}
	}
	return nil, nil
}
