package gc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/k8sname"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// TestNamespacesNamedAuditAndGC: Kubernetes namespaces may be named
// "audit" and "gc", so checkpoint keys can start like the exported audit
// segments (audit/<node>/…) and like the intents of older versions
// (gc/intents/…). Their checkpoints are retained like any other: a
// namespace gc with a pod intents is not read as intents (GC used to fail
// every run on its ciphertext, too large for an intent), a namespace
// audit's expired checkpoints go, and neither is exempt — while the audit
// segments are never planned for deletion. An intent an older version left
// under gc/intents/ is still finished, and GC's own intents go under a
// prefix no namespace can take.
func TestNamespacesNamedAuditAndGC(t *testing.T) {
	first, _, _ := strings.Cut(IntentPrefix, "/")
	if k8sname.Namespace.Valid(first) {
		t.Errorf("IntentPrefix %q starts with %q, a valid namespace name: a namespace %s with a pod named %s would share GC's intents' keys", IntentPrefix, first, first, strings.Split(IntentPrefix, "/")[1])
	}
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testNamespacesNamedAuditAndGC(t, b.new(t)) })
	}
}

func testNamespacesNamedAuditAndGC(t *testing.T, st Store) {
	ctx := context.Background()
	k := testKeys(t)
	now := time.Now()
	old, young := now.Add(-800*time.Hour), now.Add(-time.Hour)
	bases := putAll(t, st, k.signer, []spec{
		// Ciphertexts larger than any intent.
		{ns: "gc", pod: "intents", ctr: "app", at: old, size: 64 << 10, seq: 1},
		{ns: "gc", pod: "intents", ctr: "app", at: young, size: 64 << 10, seq: 2},
		{ns: "audit", pod: "node-a", ctr: "app", at: old, seq: 3},
		{ns: "audit", pod: "node-a", ctr: "app", at: young, seq: 4},
		{ns: "web", pod: "frontend-1", ctr: "nginx", at: young, seq: 5},            // a legacy intent names it
		{ns: "web", pod: "frontend-1", ctr: "nginx", at: young, seq: 6},            // a current intent names it
		{ns: "web", pod: "frontend-1", ctr: "nginx", at: young, seq: 7, pin: true}, // a legacy intent names it; pinned since
	})
	for _, b := range bases[:4] {
		if !strings.HasPrefix(b, "gc/intents/") && !strings.HasPrefix(b, audit.SegmentPrefix+"node-a/") {
			t.Fatalf("fixture %s is not under gc/intents/ or audit/node-a/", b)
		}
	}
	put := func(key string, body []byte) {
		t.Helper()
		if _, err := st.Put(ctx, key, bytes.NewReader(body), int64(len(body)), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// node-a's exported trail, next to the checkpoints of namespace audit,
	// pod node-a.
	seg := audit.SegmentKey("node-a", 1, 2)
	put(seg, []byte("{}\n"))
	intentOf := func(base string) []byte {
		b, err := json.Marshal(intent{Base: base, Policy: "global", Limit: LimitAge, Reason: "an interrupted run", Actor: "gc-old", Time: now.Add(-time.Minute).UTC()})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	legacy := "gc/intents/" + bases[4] + ".intent"
	put(legacy, intentOf(bases[4]))
	put(IntentKey(bases[5]), intentOf(bases[5]))
	put("gc/intents/"+bases[6]+".intent", intentOf(bases[6]))

	opts := Options{Policy: &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxAge: "720h"}, OrphanGrace: "1h"},
		Trusted: k.trusted, Actor: "gc-test", Audit: openLog(t)}
	plan, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatalf("GC plans on a vault with namespaces gc and audit: %v", err)
	}
	if len(plan.Unverified) != 0 {
		t.Errorf("unverified = %+v, want none", plan.Unverified)
	}
	var got []string
	for _, a := range plan.Delete {
		got = append(got, a.Base+" "+a.Policy+"/"+a.Limit)
		for _, v := range a.Versions {
			if v.Key == seg {
				t.Errorf("the audit segment %s is planned for deletion with %s", seg, a.Base)
			}
		}
	}
	want := []string{bases[0] + " global/" + LimitAge, bases[2] + " global/" + LimitAge,
		bases[4] + " global/" + LimitUnfinished, bases[5] + " global/" + LimitUnfinished}
	if d := diff(got, want); d != "" {
		t.Fatalf("planned deletions differ:\n%s", d)
	}
	if len(plan.Abandon) != 1 || plan.Abandon[0].Base != bases[6] {
		t.Errorf("abandoned = %+v, want the pinned %s", plan.Abandon, bases[6])
	}
	if plan.Checkpoints != 4 || plan.Kept != 2 {
		t.Errorf("plan counts %d checkpoints, %d kept; want 4 and 2", plan.Checkpoints, plan.Kept)
	}

	res, err := Execute(ctx, st, opts, plan)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed) > 0 {
		t.Fatalf("failures: %v", res.Failed[0].Err)
	}
	after := stateOf(t, st)
	if d := diff(after.complete(), []string{bases[1], bases[3], bases[6]}); d != "" {
		t.Errorf("surviving checkpoints differ:\n%s", d)
	}
	for _, i := range []int{0, 2, 4, 5} {
		if n := after.counts[bases[i]]; n != 0 {
			t.Errorf("%s: %d versions remain", bases[i], n)
		}
	}
	if fmt.Sprint(after.other) != fmt.Sprint([]string{seg}) {
		t.Errorf("other objects after GC = %q, want only the audit segment %s (every intent finished or abandoned, and removed)", after.other, seg)
	}
	// The next run has nothing to do, and still reads nothing as an intent.
	plan2, err := PlanRun(ctx, st, opts)
	if err != nil || len(plan2.Delete) != 0 || len(plan2.Unverified) != 0 || plan2.Checkpoints != 3 {
		t.Errorf("second run: %+v, %v; want nothing to do over 3 checkpoints", plan2, err)
	}
}
