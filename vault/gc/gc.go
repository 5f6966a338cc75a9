// Package gc applies the retention policy to a vault: it decides which
// vaulted checkpoints and which orphaned objects go, and deletes every
// version of every one of their objects, honouring pins (legal holds) and
// Object Lock retention, with an audit record for each deletion.
//
// # What goes
//
// Each checkpoint with a verified manifest falls under its most specific
// policy (container > pod > namespace > global; policy.RetentionConfig).
// Within one policy, the checkpoints it governs are taken oldest first
// (checkpoint time, then base key) and a checkpoint is due while the
// policy's count or total-size limit is exceeded, or when it is older than
// the policy's maxAge. A due checkpoint that is pinned (a legal hold on any
// of its versions) stays and keeps counting toward the limits, so the next
// oldest becomes due in its place. A due checkpoint whose versions are
// still under Object Lock retention is deferred: it no longer counts (it
// will go once the lock ends), but retention never makes another
// checkpoint go in its place — retention delays deletions, it does not
// choose them. Governance retention yields only to Options.BypassGovernance;
// compliance retention yields to nothing.
//
// Objects under a base key with no manifest (the latest version of the
// manifest key missing or a delete marker) are orphans: abandoned or
// in-flight uploads. They are reported, and removed once their newest
// version is older than retention.orphanGrace — but only under a key a
// ckvault writer makes (manifest.ParseKey): objects that merely end in a
// checkpoint object's suffix are not the vault's, and are reported, never
// deleted. An intent, too, must name such a key. A manifest that is present
// but does not verify is never deleted: it is reported (Report.Unverified)
// because it means tampering, or trusted keys missing from the config — a
// rotation mistake must not turn the whole vault into garbage.
//
// Exported audit segments (audit/) are never touched.
//
// # Deleting: order and crash safety
//
// "Deleted" means every version of the key is gone, delete markers
// included: a plain DELETE on a versioned bucket only hides the bytes.
// A checkpoint is deleted in this order:
//
//  1. an intent object ckvault.gc/intents/<base>.intent is written to the store,
//     naming the base key, the policy and the reason; then an audit record
//     of the intent (fail-closed: no record, no deletion);
//  2. the manifest's versions and its signatures (.manifest.json,
//     .manifest.sig, .manifest.sigstore.json): from here on the checkpoint
//     is no longer listed as vaulted;
//  3. the ciphertext's signatures, then the ciphertext's versions (within a
//     key, older versions before the latest, so an older manifest version
//     never resurfaces);
//  4. the outcome audit record, then the intent object.
//
// The manifest goes first, not last, because the invariant is "never a
// manifest without its ciphertext": a crash after step 2 leaves a
// ciphertext without a manifest, which is not silently orphaned — the
// intent object names it, and the next run (Plan) finishes every intent it
// finds before anything else, without waiting for orphanGrace. A crash
// before step 2 leaves the whole checkpoint and an intent, which the next
// run also finishes (or abandons, audited, if a pin or lock appeared). All
// of this is shown by the crash test, which SIGKILLs a GC at every step.
//
// # Dry run
//
// Plan decides everything, including the lock and pin lookups, without
// changing anything; Execute carries a plan out. `ckvault gc --dry-run`
// prints the plan, and a real run executes exactly that plan.
package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Store is what GC needs of a store: the ordinary operations plus the
// version-level ones. s3store.Store and filestore.Store implement it.
type Store interface {
	store.Store
	// ListVersions calls fn for every version and delete marker under
	// prefix, in key order, newest version of a key first.
	ListVersions(ctx context.Context, prefix string, fn func(store.Version) error) error
	// VersionLock reports one version's retention and legal hold.
	VersionLock(ctx context.Context, key, versionID string) (store.Lock, error)
	// DeleteVersion removes one version for good (ErrLocked if a lock
	// forbids it; governance yields only to opts.BypassGovernance).
	DeleteVersion(ctx context.Context, key, versionID string, opts store.DeleteOptions) error
}

// Auditor records what GC does; *audit.Log and *auditsock.Client
// implement it. Append returns once the record is durable.
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// IntentPrefix holds the intent objects of deletions in progress. Its first
// segment has a dot, which no Kubernetes namespace name has (DNS-1123
// label), so no checkpoint's key starts with it: GC never reads a
// checkpoint object as an intent, and its store identity may write here
// without being able to write any checkpoint (deploy/bucket-policies).
const IntentPrefix = "ckvault.gc/intents/"

// LegacyIntentPrefix is where versions before IntentPrefix wrote their
// intents. It is also where the checkpoints of a namespace "gc" with a pod
// "intents" go, so an object there is an intent only if its key has the
// intent's structure (legacyIntent); GC still finishes such intents, and
// never writes one there.
const LegacyIntentPrefix = "gc/intents/"

// intentSuffix ends every intent object's key.
const intentSuffix = ".intent"

// IntentKey names the intent object of a base key.
func IntentKey(base string) string { return IntentPrefix + base + intentSuffix }

// legacyIntentKey names the intent object an older version wrote.
func legacyIntentKey(base string) string { return LegacyIntentPrefix + base + intentSuffix }

// checkpointSlashes is the number of "/" in every checkpoint object's key
// (<namespace>/<pod>/<container>/<object>; no name component has one).
const checkpointSlashes = 3

// legacyIntent reports whether key is under LegacyIntentPrefix with an
// intent's structure: an intent key embeds a whole base key, so it has
// more "/" than any checkpoint object, which is what a key there with a
// checkpoint's structure is (namespace gc, pod intents).
func legacyIntent(key string) bool {
	return strings.HasPrefix(key, LegacyIntentPrefix) && strings.HasSuffix(key, intentSuffix) &&
		strings.Count(key, "/") > checkpointSlashes
}

// auditSegmentArea reports whether key is under the audit segments'
// prefix and is not shaped like a checkpoint object. Segments
// (audit/<node>/<first>-<last>.jsonl) and anything else there that is not
// a checkpoint of a namespace named "audit" are never GC's.
func auditSegmentArea(key string) bool {
	return strings.HasPrefix(key, audit.SegmentPrefix) && strings.Count(key, "/") != checkpointSlashes
}

// Limit names why an action was chosen.
const (
	LimitCount      = "maxCount"
	LimitTotalSize  = "maxTotalSize"
	LimitAge        = "maxAge"
	LimitOrphan     = "orphanGrace"
	LimitUnfinished = "unfinished" // an intent left by an interrupted run
)

// Options configure a run.
type Options struct {
	// Policy is the retention section of the config. Required.
	Policy *policy.RetentionConfig
	// Trusted verifies manifests. Required.
	Trusted *signing.TrustedKeys
	// Audit records the run and every deletion. Required for Execute.
	Audit Auditor
	// Actor names who runs GC in audit records.
	Actor string
	// BypassGovernance deletes versions under governance retention; every
	// such deletion is audited with bypass=governance.
	BypassGovernance bool
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Concurrency bounds parallel store requests (default 8).
	Concurrency int
	// Logger receives progress (default slog.Default()).
	Logger *slog.Logger

	// testHook, if set, runs after each durable step of Execute (tests
	// kill the process there).
	testHook func(step string)
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) concurrency() int {
	if o.Concurrency > 0 {
		return o.Concurrency
	}
	return 8
}

func (o *Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// Action is one base key to delete, and why.
type Action struct {
	// Base is the base key; Objects are its versions to delete, in the
	// order they will be deleted.
	Base     string          `json:"base"`
	Versions []store.Version `json:"-"`
	// Policy names the policy ("global", "namespace payments", "pod
	// payments/api-0", "container payments/api-0/api", "orphanGrace", or
	// the one an interrupted run recorded), Limit which of its limits.
	Policy string `json:"policy"`
	Limit  string `json:"limit"`
	Reason string `json:"reason"`
	// Namespace, Pod, Container and Checkpointed come from the verified
	// manifest, or from the key for orphans.
	Namespace    string    `json:"namespace,omitempty"`
	Pod          string    `json:"pod,omitempty"`
	Container    string    `json:"container,omitempty"`
	Checkpointed time.Time `json:"checkpointed,omitzero"`
	// Size is the ciphertext size the manifest records (orphans: the
	// bytes of all their versions).
	Size int64 `json:"size"`
	// Bypass is "governance" when a version goes only because governance
	// retention is bypassed.
	Bypass string `json:"bypass,omitempty"`

	// intentKey and intentVersion are the key (IntentKey, or
	// legacyIntentKey for an older version's) and version of an
	// unfinished action's intent.
	intentKey, intentVersion string
}

// Held is a due checkpoint or orphan that stays for now.
type Held struct {
	Base   string `json:"base"`
	Policy string `json:"policy"`
	Limit  string `json:"limit"`
	// Why: "pinned (legal hold on KEY)", "compliance retention of KEY
	// until T", "orphan, within grace until T".
	Why string `json:"why"`

	// intentKey is the intent of an abandoned deletion.
	intentKey string
}

// Problem is a base key GC will not touch, and why.
type Problem struct {
	Base string `json:"base"`
	Err  string `json:"problem"`
}

// Plan is what a run will do.
type Plan struct {
	// Delete lists the actions, in base key order.
	Delete []Action `json:"delete"`
	// Pinned, Deferred: due but staying (pins count toward limits;
	// deferred ones are retained and go in a later run).
	Pinned   []Held `json:"pinned"`
	Deferred []Held `json:"deferred"`
	// Orphans within their grace period.
	YoungOrphans []Held `json:"youngOrphans"`
	// Abandon lists interrupted deletions whose checkpoint is still whole
	// and now pinned or locked: their intent is removed, audited.
	Abandon []Held `json:"abandon"`
	// Unverified lists what GC keeps because it cannot vouch for it:
	// manifests that do not verify or cannot be read, intents it cannot
	// take as its own, and objects under keys that are not a checkpoint's.
	Unverified []Problem `json:"unverified"`
	// Checkpoints is the number of verified checkpoints seen; Kept the
	// number that stay.
	Checkpoints int `json:"checkpoints"`
	Kept        int `json:"kept"`
	// Now is the time the plan was made for.
	Now time.Time `json:"now"`
}

// group is the versions under one base key.
type group struct {
	base     string
	versions []store.Version // as listed: key order, newest first per key
}

func (g *group) latest(key string) (store.Version, bool) {
	for _, v := range g.versions {
		if v.Key == key && v.IsLatest {
			return v, true
		}
	}
	return store.Version{}, false
}

func (g *group) newest() time.Time {
	var t time.Time
	for _, v := range g.versions {
		if v.LastModified.After(t) {
			t = v.LastModified
		}
	}
	return t
}

func (g *group) bytes() int64 {
	var n int64
	for _, v := range g.versions {
		n += v.Size
	}
	return n
}

// deletionOrder sorts a base's versions into the order they are deleted:
// the manifest and its signatures first, then the ciphertext's signatures,
// then the ciphertext; within a key, older versions first and the latest
// last.
func deletionOrder(base string, vs []store.Version) []store.Version {
	objs := manifest.ObjectsFor(base)
	rank := map[string]int{
		objs.Manifest: 0, objs.ManifestSig: 1, objs.ManifestBundle: 2,
		objs.CiphertextSig: 3, objs.CiphertextBundle: 4, objs.Ciphertext: 5,
	}
	out := append([]store.Version(nil), vs...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if rank[a.Key] != rank[b.Key] {
			return rank[a.Key] < rank[b.Key]
		}
		if a.IsLatest != b.IsLatest {
			return !a.IsLatest
		}
		return a.LastModified.Before(b.LastModified)
	})
	return out
}

// checkpoint is a base with a verified manifest, reduced to what
// selection needs (10,000 whole manifests would dominate GC's memory).
type checkpoint struct {
	g                         *group
	namespace, pod, container string
	checkpointed              time.Time
	size                      int64
}

// scope is one policy and the checkpoints it governs.
type scope struct {
	name   string
	limits policy.Limits
	cps    []*checkpoint
}

// PlanRun lists the store, verifies the manifests and decides what goes.
// It changes nothing.
func PlanRun(ctx context.Context, st Store, opts Options) (*Plan, error) {
	if opts.Policy == nil {
		return nil, errors.New("gc: no retention policy: add a retention: section to the config (deploy/ckvault.example.yaml documents it)")
	}
	if opts.Trusted == nil {
		return nil, errors.New("gc: no trusted signing keys: set signing.publicKey (GC deletes only what it can verify)")
	}
	now := opts.now()
	plan := &Plan{Now: now, Delete: []Action{}, Pinned: []Held{}, Deferred: []Held{}, YoungOrphans: []Held{}, Abandon: []Held{}, Unverified: []Problem{}}

	groups := map[string]*group{}
	var intents []store.Version
	err := st.ListVersions(ctx, "", func(v store.Version) error {
		switch {
		case auditSegmentArea(v.Key):
			return nil // exported audit segments are never GC's
		case strings.HasPrefix(v.Key, IntentPrefix), legacyIntent(v.Key):
			intents = append(intents, v)
			return nil
		}
		base, ok := manifest.BaseKeyOf(v.Key)
		if !ok {
			return nil // not a checkpoint object
		}
		g := groups[base]
		if g == nil {
			g = &group{base: base}
			groups[base] = g
		}
		g.versions = append(g.versions, v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: listing %s: %w", st.Describe(), err)
	}

	// 1. Intents of interrupted runs are finished first.
	unfinished := map[string]bool{}
	var actions []Action
	for _, iv := range intents {
		if !iv.IsLatest || iv.DeleteMarker {
			continue
		}
		in, err := readIntent(ctx, st, iv.Key)
		if errors.Is(err, errTransient) {
			return nil, err
		}
		if err != nil {
			plan.Unverified = append(plan.Unverified, Problem{Base: iv.Key, Err: err.Error()})
			continue
		}
		if unfinished[in.Base] {
			// An older version's intent and a current one for the same
			// base: one action finishes the base, and the next run, which
			// finds the base gone, removes the other intent.
			continue
		}
		unfinished[in.Base] = true
		if g := groups[in.Base]; g != nil {
			h, _, err := locks(ctx, st, &opts, g.versions, now)
			if err != nil {
				return nil, err
			}
			if h != nil {
				held := Held{Base: in.Base, Policy: in.Policy, Limit: LimitUnfinished, Why: h.why, intentKey: iv.Key}
				if mv, ok := g.latest(manifest.ObjectsFor(in.Base).Manifest); ok && !mv.DeleteMarker {
					// Nothing was deleted yet and a pin or lock appeared:
					// the checkpoint stays whole and the intent goes.
					held.Why += "; the interrupted deletion is abandoned"
					plan.Abandon = append(plan.Abandon, held)
				} else {
					plan.Deferred = append(plan.Deferred, held)
				}
				continue
			}
		}
		a := Action{Base: in.Base, Policy: in.Policy, Limit: LimitUnfinished, intentKey: iv.Key, intentVersion: iv.VersionID,
			Reason: fmt.Sprintf("finishing a deletion begun %s (%s: %s)", in.Time.UTC().Format(time.RFC3339), in.Limit, in.Reason)}
		if g := groups[in.Base]; g != nil {
			a.Versions = g.versions
			a.Size = g.bytes()
		}
		a.Namespace, a.Pod, a.Container = keyIdentity(in.Base)
		actions = append(actions, a)
	}

	// 2. Verify manifests; sort out orphans.
	var bases []string
	for b := range groups {
		if !unfinished[b] {
			bases = append(bases, b)
		}
	}
	sort.Strings(bases)
	type loaded struct {
		m   *manifest.Manifest
		err error
		has bool
	}
	res := make([]loaded, len(bases))
	sem := make(chan struct{}, opts.concurrency())
	var wg sync.WaitGroup
	for i, b := range bases {
		g := groups[b]
		mv, ok := g.latest(manifest.ObjectsFor(b).Manifest)
		if !ok || mv.DeleteMarker {
			continue // an orphan
		}
		res[i].has = true
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, b string) {
			defer wg.Done()
			defer func() { <-sem }()
			res[i].m, res[i].err = verifyManifest(ctx, st, opts.Trusted, b)
		}(i, b)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var cps []*checkpoint
	grace := opts.Policy.OrphanGraceDuration()
	var orphans []Action
	for i, b := range bases {
		g := groups[b]
		switch r := res[i]; {
		case !r.has:
			if _, ok := manifest.ParseKey(b); !ok {
				// Objects with a checkpoint object's suffix under a key no
				// ckvault writer makes: not an abandoned upload but
				// something else's, which GC must not delete.
				plan.Unverified = append(plan.Unverified, Problem{Base: b, Err: fmt.Sprintf(
					"%d object(s) with a checkpoint object's suffix but no manifest, under a key that is not a checkpoint's (<namespace>/<pod>/<container>/<time>-<node>-<id>, docs/FORMAT.md): not the vault's, so GC leaves them; move them out of the vault's prefix", len(g.versions))})
				continue
			}
			a := Action{Base: b, Versions: g.versions, Policy: "orphanGrace", Limit: LimitOrphan, Size: g.bytes()}
			a.Namespace, a.Pod, a.Container = keyIdentity(b)
			newest := g.newest()
			if now.Sub(newest) < grace {
				plan.YoungOrphans = append(plan.YoungOrphans, Held{Base: b, Policy: a.Policy, Limit: LimitOrphan,
					Why: fmt.Sprintf("no manifest; newest object written %s, removed after %s", newest.UTC().Format(time.RFC3339), newest.Add(grace).UTC().Format(time.RFC3339))})
				continue
			}
			a.Reason = fmt.Sprintf("no manifest (abandoned upload); newest of its %d versions written %s, more than %s ago", len(g.versions), newest.UTC().Format(time.RFC3339), grace)
			orphans = append(orphans, a)
		case r.err != nil:
			if errors.Is(r.err, errTransient) {
				return nil, r.err
			}
			plan.Unverified = append(plan.Unverified, Problem{Base: b, Err: r.err.Error()})
		default:
			m := r.m
			cps = append(cps, &checkpoint{g: g, namespace: m.Namespace, pod: m.Pod, container: m.Container,
				checkpointed: m.CheckpointedAt.Time, size: m.Ciphertext.Size})
			res[i].m = nil
		}
	}
	plan.Checkpoints = len(cps)

	// 3. Lock lookups for orphans past their grace.
	for _, a := range orphans {
		h, bypass, err := locks(ctx, st, &opts, a.Versions, now)
		if err != nil {
			return nil, err
		}
		switch {
		case h != nil && h.pinned:
			plan.Pinned = append(plan.Pinned, Held{Base: a.Base, Policy: a.Policy, Limit: a.Limit, Why: h.why})
		case h != nil:
			plan.Deferred = append(plan.Deferred, Held{Base: a.Base, Policy: a.Policy, Limit: a.Limit, Why: h.why})
		default:
			a.Bypass = bypass
			actions = append(actions, a)
		}
	}

	// 4. Policies.
	scopes := assign(opts.Policy, cps)
	kept := len(cps)
	for _, sc := range scopes {
		sort.Slice(sc.cps, func(i, j int) bool {
			a, b := sc.cps[i], sc.cps[j]
			if !a.checkpointed.Equal(b.checkpointed) {
				return a.checkpointed.Before(b.checkpointed)
			}
			return a.g.base < b.g.base
		})
		count := len(sc.cps)
		var total int64
		for _, c := range sc.cps {
			total += c.size
		}
		lim := sc.limits
		for _, c := range sc.cps {
			age := now.Sub(c.checkpointed)
			var limit, reason string
			switch {
			case lim.MaxCount > 0 && count > lim.MaxCount:
				limit, reason = LimitCount, fmt.Sprintf("%d checkpoints under %s, at most %d; oldest first", count, sc.name, lim.MaxCount)
			case lim.MaxTotalSize > 0 && total > lim.MaxTotalSize:
				limit, reason = LimitTotalSize, fmt.Sprintf("%d bytes under %s, at most %d; oldest first", total, sc.name, lim.MaxTotalSize)
			case lim.MaxAge > 0 && age > lim.MaxAge:
				limit, reason = LimitAge, fmt.Sprintf("checkpointed %s, older than %s", c.checkpointed.UTC().Format(time.RFC3339), lim.MaxAge)
			default:
				continue
			}
			h, bypass, err := locks(ctx, st, &opts, c.g.versions, now)
			if err != nil {
				return nil, err
			}
			if h != nil && h.pinned {
				// Pinned: stays and keeps counting.
				plan.Pinned = append(plan.Pinned, Held{Base: c.g.base, Policy: sc.name, Limit: limit, Why: h.why})
				continue
			}
			count--
			total -= c.size
			if h != nil {
				plan.Deferred = append(plan.Deferred, Held{Base: c.g.base, Policy: sc.name, Limit: limit, Why: h.why})
				continue
			}
			kept--
			actions = append(actions, Action{Base: c.g.base, Versions: c.g.versions, Policy: sc.name, Limit: limit, Reason: reason,
				Namespace: c.namespace, Pod: c.pod, Container: c.container, Checkpointed: c.checkpointed, Size: c.size, Bypass: bypass})
		}
	}
	plan.Kept = kept
	for i := range actions {
		actions[i].Versions = deletionOrder(actions[i].Base, actions[i].Versions)
	}
	sort.Slice(actions, func(i, j int) bool { return actions[i].Base < actions[j].Base })
	plan.Delete = actions
	for _, l := range [][]Held{plan.Pinned, plan.Deferred, plan.YoungOrphans, plan.Abandon} {
		sort.Slice(l, func(i, j int) bool { return l[i].Base < l[j].Base })
	}
	sort.Slice(plan.Unverified, func(i, j int) bool { return plan.Unverified[i].Base < plan.Unverified[j].Base })
	return plan, nil
}

// keyIdentity reads namespace, pod and container from a base key
// (unverified: for orphans and audit records only).
func keyIdentity(base string) (ns, pod, ctr string) {
	seg := strings.Split(base, "/")
	if len(seg) == 4 {
		return seg[0], seg[1], seg[2]
	}
	return "", "", ""
}

// assign puts every checkpoint under its most specific policy. Checkpoints
// under no policy at all (no global, no match) are kept.
func assign(p *policy.RetentionConfig, cps []*checkpoint) []*scope {
	byName := map[string]*scope{}
	var order []string
	add := func(name string, l policy.Limits, c *checkpoint) {
		sc := byName[name]
		if sc == nil {
			sc = &scope{name: name, limits: l}
			byName[name] = sc
			order = append(order, name)
		}
		sc.cps = append(sc.cps, c)
	}
	for _, c := range cps {
		ctr := c.namespace + "/" + c.pod + "/" + c.container
		pod := c.namespace + "/" + c.pod
		if l, ok := p.Containers[ctr]; ok {
			add("container "+ctr, l.Parsed(), c)
		} else if l, ok := p.Pods[pod]; ok {
			add("pod "+pod, l.Parsed(), c)
		} else if l, ok := p.Namespaces[c.namespace]; ok {
			add("namespace "+c.namespace, l.Parsed(), c)
		} else if p.Global != nil {
			add("global", p.Global.Parsed(), c)
		}
	}
	sort.Strings(order)
	out := make([]*scope, len(order))
	for i, n := range order {
		out[i] = byName[n]
	}
	return out
}

// hold says why versions cannot go now.
type hold struct {
	pinned bool
	why    string
}

// locks looks up the lock of every data version (delete markers carry
// none) and says whether they may all go now. bypass is "governance" when
// they may only because governance retention is bypassed.
func locks(ctx context.Context, st Store, opts *Options, vs []store.Version, now time.Time) (*hold, string, error) {
	type res struct {
		v   store.Version
		l   store.Lock
		err error
	}
	out := make([]res, len(vs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, opts.concurrency())
	for i, v := range vs {
		out[i].v = v
		if v.DeleteMarker {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, v store.Version) {
			defer wg.Done()
			defer func() { <-sem }()
			out[i].l, out[i].err = st.VersionLock(ctx, v.Key, v.VersionID)
		}(i, v)
	}
	wg.Wait()
	var retained *hold
	bypass := ""
	for _, r := range out {
		if errors.Is(r.err, store.ErrNotExist) {
			continue // gone since the listing
		}
		if r.err != nil {
			return nil, "", fmt.Errorf("gc: reading the lock of %s: %w", r.v.Key, r.err)
		}
		if r.l.LegalHold {
			return &hold{pinned: true, why: "pinned (legal hold on " + r.v.Key + ")"}, "", nil
		}
		if !r.l.Retained(now) || retained != nil {
			continue
		}
		if r.l.Mode == "governance" && opts.BypassGovernance {
			bypass = "governance"
			continue
		}
		retained = &hold{why: fmt.Sprintf("%s retention of %s until %s", r.l.Mode, r.v.Key, r.l.Until.UTC().Format(time.RFC3339))}
	}
	if retained != nil {
		return retained, "", nil
	}
	return nil, bypass, nil
}
