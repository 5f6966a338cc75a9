package gc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// tablePolicy is the policy of TestPolicyTable:
//
//	global:     {maxAge: 720h}
//	namespaces: {payments: {maxCount: 10}, media: {maxTotalSize: 100KiB}}
//	pods:       {payments/api-0: {maxAge: 48h}}
//	containers: {payments/api-0/api: {maxCount: 3}}
func tablePolicy(grace string) *policy.RetentionConfig {
	return &policy.RetentionConfig{
		Global: &policy.RetentionLimits{MaxAge: "720h"},
		Namespaces: map[string]policy.RetentionLimits{
			"payments": {MaxCount: 10},
			"media":    {MaxTotalSize: "100KiB"},
		},
		Pods:        map[string]policy.RetentionLimits{"payments/api-0": {MaxAge: "48h"}},
		Containers:  map[string]policy.RetentionLimits{"payments/api-0/api": {MaxCount: 3}},
		OrphanGrace: grace,
	}
}

// TestPolicyTable builds a vault of 263 checkpoints and a few orphans on
// every backend, and checks the exact survivors of each policy level,
// with pins, compliance and governance locks, an unverifiable manifest,
// orphans young and old, a plainly deleted manifest (a delete marker is
// not deletion) and an exported audit segment; then that a real run
// deletes exactly what the dry run planned, audits every deletion with its
// policy, and that a bypass of governance (only) happens when asked.
func TestPolicyTable(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testPolicyTable(t, b.new(t)) })
	}
}

func testPolicyTable(t *testing.T, st Store) {
	ctx := context.Background()
	k := testKeys(t)
	other, err := keysIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	lockUntil := now.Add(15 * time.Minute)
	seq := 0
	next := func(s spec) spec { seq++; s.seq = seq; return s }

	// Orphans that will be past their grace: uploads without a manifest,
	// and a checkpoint whose manifest was deleted plainly (on a versioned
	// bucket: hidden behind a delete marker, bytes still there).
	const grace = 3 * time.Second
	var oldOrphans []string
	for i := range 2 {
		base := putCheckpoint(t, st, k.signer, next(spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: ago(time.Duration(i+1) * time.Minute)}))
		o := manifest.ObjectsFor(base)
		for _, key := range []string{o.Manifest, o.ManifestSig, o.ManifestBundle} {
			dropAll(t, st, key)
		}
		oldOrphans = append(oldOrphans, base)
	}
	hidden := putCheckpoint(t, st, k.signer, next(spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: ago(3 * time.Minute)}))
	if err := st.Delete(ctx, manifest.ObjectsFor(hidden).Manifest, ""); err != nil {
		t.Fatal(err)
	}
	oldOrphans = append(oldOrphans, hidden)
	orphanedAt := time.Now()

	var specs []spec
	var survivors []int // indexes into specs
	want := map[int]string{}
	wantDelete := func(i int, policy string) { want[i] = policy }

	// A: web/frontend-1/nginx under the global maxAge 720h: 200
	// checkpoints every 5h; i ≥ 144 are older than 720h. 170 is pinned,
	// 150 under compliance and 160 under governance retention.
	aStart := len(specs)
	for i := range 200 {
		s := spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: ago(time.Duration(i)*5*time.Hour + 30*time.Minute)}
		switch i {
		case 150:
			s.retention = store.Retention{Mode: "compliance", Until: lockUntil}
		case 160:
			s.retention = store.Retention{Mode: "governance", Until: lockUntil}
		case 170:
			s.pin = true
		}
		specs = append(specs, next(s))
		if i < 144 || i == 150 || i == 160 || i == 170 {
			survivors = append(survivors, len(specs)-1)
		} else {
			wantDelete(len(specs)-1, "global/"+LimitAge)
		}
	}
	idx150, idx160, idx170 := aStart+150, aStart+160, aStart+170

	// B: namespace payments, maxCount 10, over two pods: worker-1 (5,
	// aged 21-25h; the oldest pinned) and worker-0 (15, aged 1-15h). The
	// pin counts, so 10 go and the pinned one plus the 9 newest stay.
	var pinnedB int
	for j := 5; j >= 1; j-- {
		specs = append(specs, next(spec{ns: "payments", pod: "worker-1", ctr: "w", at: ago(time.Duration(20+j) * time.Hour), pin: j == 5}))
		if j == 5 {
			pinnedB = len(specs) - 1
			survivors = append(survivors, pinnedB)
		} else {
			wantDelete(len(specs)-1, "namespace payments/"+LimitCount)
		}
	}
	for j := 15; j >= 1; j-- {
		specs = append(specs, next(spec{ns: "payments", pod: "worker-0", ctr: "w", at: ago(time.Duration(j) * time.Hour)}))
		if j <= 9 {
			survivors = append(survivors, len(specs)-1)
		} else {
			wantDelete(len(specs)-1, "namespace payments/"+LimitCount)
		}
	}

	// C: pod payments/api-0 (container sidecar), maxAge 48h: aged 10h to
	// 100h; the 4 younger than 48h stay.
	for j := 1; j <= 10; j++ {
		specs = append(specs, next(spec{ns: "payments", pod: "api-0", ctr: "sidecar", at: ago(time.Duration(j)*10*time.Hour + 5*time.Minute)}))
		if j <= 4 {
			survivors = append(survivors, len(specs)-1)
		} else {
			wantDelete(len(specs)-1, "pod payments/api-0/"+LimitAge)
		}
	}

	// D: container payments/api-0/api, maxCount 3, aged 60h to 130h: the
	// 3 newest stay although older than the pod's 48h — the most specific
	// policy replaces the others whole.
	for j := range 8 {
		specs = append(specs, next(spec{ns: "payments", pod: "api-0", ctr: "api", at: ago(time.Duration(60+10*j) * time.Hour)}))
		if j < 3 {
			survivors = append(survivors, len(specs)-1)
		} else {
			wantDelete(len(specs)-1, "container payments/api-0/api/"+LimitCount)
		}
	}

	// E: namespace media, maxTotalSize 100KiB: 20 ciphertexts of 10 KiB
	// aged 1-20h; the 10 oldest go and exactly 100 KiB stays.
	for j := 1; j <= 20; j++ {
		specs = append(specs, next(spec{ns: "media", pod: "encoder-0", ctr: "enc", size: 10 << 10, at: ago(time.Duration(j) * time.Hour)}))
		if j <= 10 {
			survivors = append(survivors, len(specs)-1)
		} else {
			wantDelete(len(specs)-1, "namespace media/"+LimitTotalSize)
		}
	}

	bases := putAll(t, st, k.signer, specs)

	// F: a manifest signed by an untrusted key, far past every limit:
	// reported, never deleted.
	unverified := putCheckpoint(t, st, other.signer, next(spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: ago(900 * time.Hour)}))
	// An exported audit segment: never GC's to delete.
	segKey := audit.SegmentKey("node-a", 1, 2)
	if _, err := st.Put(ctx, segKey, bytes.NewReader([]byte("{}\n")), 3, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(orphanedAt.Add(grace + time.Second)))
	// G: a young orphan, an upload in flight.
	young := putCheckpoint(t, st, k.signer, next(spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: ago(time.Minute)}))
	dropAll(t, st, manifest.ObjectsFor(young).Manifest)

	opts := Options{Policy: tablePolicy(grace.String()), Trusted: k.trusted, Actor: "gc-test", Audit: openLog(t)}
	plan, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}

	// The plan, exactly.
	var wantBases []string
	wantPolicy := map[string]string{}
	for i, p := range want {
		wantBases = append(wantBases, bases[i])
		wantPolicy[bases[i]] = p
	}
	for _, o := range oldOrphans {
		wantBases = append(wantBases, o)
		wantPolicy[o] = "orphanGrace/" + LimitOrphan
	}
	var planned []string
	for _, a := range plan.Delete {
		planned = append(planned, a.Base)
		if got := a.Policy + "/" + a.Limit; got != wantPolicy[a.Base] {
			t.Errorf("%s: planned under %s, want %s (%s)", a.Base, got, wantPolicy[a.Base], a.Reason)
		}
	}
	if d := diff(planned, wantBases); d != "" {
		t.Fatalf("planned deletions differ (%d planned, %d expected):\n%s", len(planned), len(wantBases), d)
	}
	heldBases := func(hs []Held) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.Base)
		}
		return out
	}
	if d := diff(heldBases(plan.Pinned), []string{bases[idx170], bases[pinnedB]}); d != "" {
		t.Errorf("pinned:\n%s", d)
	}
	if d := diff(heldBases(plan.Deferred), []string{bases[idx150], bases[idx160]}); d != "" {
		t.Errorf("deferred:\n%s", d)
	}
	if d := diff(heldBases(plan.YoungOrphans), []string{young}); d != "" {
		t.Errorf("young orphans:\n%s", d)
	}
	if len(plan.Unverified) != 1 || plan.Unverified[0].Base != unverified {
		t.Errorf("unverified = %+v, want %s", plan.Unverified, unverified)
	}
	if plan.Checkpoints != len(specs) || plan.Kept != len(survivors) {
		t.Errorf("plan counts %d checkpoints, %d kept; want %d and %d", plan.Checkpoints, plan.Kept, len(specs), len(survivors))
	}

	// The real run deletes exactly the plan.
	res, err := Execute(ctx, st, opts, plan)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed) > 0 {
		t.Fatalf("failures: %v", res.Failed[0].Err)
	}
	var done []string
	for _, a := range res.Deleted {
		done = append(done, a.Base)
	}
	if d := diff(done, planned); d != "" {
		t.Fatalf("the real run differs from the dry run:\n%s", d)
	}

	// What is left, exactly.
	after := stateOf(t, st)
	var wantLeft []string
	for _, i := range survivors {
		wantLeft = append(wantLeft, bases[i])
	}
	wantLeft = append(wantLeft, unverified)
	if d := diff(after.complete(), wantLeft); d != "" {
		t.Errorf("surviving checkpoints differ:\n%s", d)
	}
	for _, b := range wantBases {
		if n := after.counts[b]; n != 0 {
			t.Errorf("%s: %d versions (or delete markers) remain after deletion", b, n)
		}
	}
	if !after.bases[young][manifest.SuffixCiphertext] {
		t.Error("the young orphan's ciphertext was removed within its grace")
	}
	if fmt.Sprint(after.other) != fmt.Sprint([]string{segKey}) {
		t.Errorf("other objects after GC = %q, want only the audit segment %s (and no intent left)", after.other, segKey)
	}

	// Every deletion is audited with its policy: intent, then outcome.
	recs := auditRecords(t, opts.Audit.(*audit.Log), ActionDeleted)
	outcomes := map[string]audit.Record{}
	intents := 0
	for _, r := range recs {
		switch r.Detail["phase"] {
		case "intent":
			intents++
		case "outcome":
			outcomes[r.Subject] = r
		}
	}
	if intents != len(planned) || len(outcomes) != len(planned) {
		t.Errorf("audit: %d intents and %d outcomes for %d deletions", intents, len(outcomes), len(planned))
	}
	for b, r := range outcomes {
		if got := r.Detail["policy"] + "/" + r.Detail["limit"]; got != wantPolicy[b] || r.Outcome != audit.OK {
			t.Errorf("audit record of %s: %s %s, want %s ok", b, got, r.Outcome, wantPolicy[b])
		}
	}

	// Nothing more to do without a bypass; with one, the governance-locked
	// checkpoint goes (audited as a bypass) and the compliance one stays.
	// (A longer grace keeps the young orphan out of these runs.)
	opts.Policy = tablePolicy("1h")
	plan2, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan2.Delete) != 0 {
		t.Errorf("a second run plans %d deletions, want none", len(plan2.Delete))
	}
	opts.BypassGovernance = true
	plan3, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan3.Delete) != 1 || plan3.Delete[0].Base != bases[idx160] || plan3.Delete[0].Bypass != "governance" {
		t.Fatalf("with bypass, plan = %+v; want only %s, bypassing governance", plan3.Delete, bases[idx160])
	}
	if d := diff(heldBases(plan3.Deferred), []string{bases[idx150]}); d != "" {
		t.Errorf("with bypass, deferred:\n%s", d)
	}
	if res, err := Execute(ctx, st, opts, plan3); err != nil || len(res.Deleted) != 1 {
		t.Fatalf("bypass run: %+v, %v", res, err)
	}
	if n := stateOf(t, st).counts[bases[idx160]]; n != 0 {
		t.Errorf("governance-locked checkpoint: %d versions left after the bypass", n)
	}
	bypassed := 0
	for _, r := range auditRecords(t, opts.Audit.(*audit.Log), ActionDeleted) {
		if r.Subject == bases[idx160] && r.Detail["bypass"] == "governance" {
			bypassed++
		}
	}
	if bypassed != 2 {
		t.Errorf("the bypass deletion has %d audit records marked bypass=governance, want intent and outcome", bypassed)
	}
	// And compliance still refuses, whatever GC is told.
	o := manifest.ObjectsFor(bases[idx150])
	if err := st.DeleteVersion(ctx, o.Ciphertext, versionOf(t, st, o.Ciphertext), store.DeleteOptions{BypassGovernance: true}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("deleting a compliance-locked version with bypass = %v, want ErrLocked", err)
	}
}

func auditRecords(t *testing.T, l *audit.Log, action string) []audit.Record {
	t.Helper()
	p, err := l.Query(context.Background(), audit.Filter{Action: action, Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	return p.Records
}

// dropAll deletes every version of key, delete markers included.
func dropAll(t testing.TB, st Store, key string) {
	t.Helper()
	if err := removeAll(context.Background(), st, key); err != nil {
		t.Fatal(err)
	}
}

func versionOf(t testing.TB, st Store, key string) string {
	t.Helper()
	id, found := "", false
	st.ListVersions(context.Background(), key, func(v store.Version) error {
		if v.Key == key && v.IsLatest {
			id, found = v.VersionID, true
		}
		return nil
	})
	if !found {
		t.Fatalf("%s has no latest version", key)
	}
	return id
}
