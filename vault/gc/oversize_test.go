package gc

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// TestOversizeObjectsDoNotStopGC: a node may write any bytes under its own
// keys (deploy/bucket-policies/node.json), including a manifest, a manifest
// signature or an intent-shaped key under the older intents' prefix
// (gc/intents/<a>/<b>/<c>-<node>-<d>.intent, which the node's grant
// matches) larger than GC reads. Too large is what the object is, not a
// failure of the store: each is a problem of its own base or key, kept and
// reported, and the run goes on deleting what is due — one compromised
// node must not stop retention for the whole vault.
func TestOversizeObjectsDoNotStopGC(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testOversizeObjectsDoNotStopGC(t, b.new(t)) })
	}
}

func testOversizeObjectsDoNotStopGC(t *testing.T, st Store) {
	ctx := context.Background()
	k := testKeys(t)
	old := time.Now().Add(-800 * time.Hour)
	due := putAll(t, st, k.signer, []spec{{ns: "web", pod: "frontend-1", ctr: "nginx", at: old, seq: 1}})[0]
	put := func(key string, size int) {
		t.Helper()
		body := bytes.Repeat([]byte("x"), size)
		if _, err := st.Put(ctx, key, bytes.NewReader(body), int64(len(body)), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bigManifest := "web/frontend-1/nginx/20261130T120000Z-node-a-00000000000000aa"
	put(bigManifest+manifest.SuffixCiphertext, 100)
	put(bigManifest+manifest.SuffixManifest, manifest.MaxSize+1)
	bigSig := "web/frontend-1/nginx/20261130T120000Z-node-a-00000000000000bb"
	put(bigSig+manifest.SuffixManifest, 100)
	put(bigSig+manifest.SuffixManifestSig, manifest.MaxSignatureSize+1)
	bigIntent := LegacyIntentPrefix + "a/b/c-node-a-x" + intentSuffix
	if !legacyIntent(bigIntent) {
		t.Fatalf("%s is not read as an older version's intent; the test needs one that is", bigIntent)
	}
	put(bigIntent, maxIntentSize+1)

	opts := Options{Policy: &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxAge: "720h"}, OrphanGrace: "1h"},
		Trusted: k.trusted, Actor: "gc-test", Audit: openLog(t)}
	plan, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatalf("GC stops on objects too large to read: %v", err)
	}
	var got []string
	for _, p := range plan.Unverified {
		got = append(got, p.Base)
		if !strings.Contains(p.Err, "larger than") {
			t.Errorf("problem of %s: %q, want it to say the object is too large", p.Base, p.Err)
		}
	}
	if d := diff(got, []string{bigManifest, bigSig, bigIntent}); d != "" {
		t.Errorf("unverified differ:\n%s", d)
	}
	if len(plan.Delete) != 1 || plan.Delete[0].Base != due {
		t.Errorf("planned deletions %+v, want only the expired %s", plan.Delete, due)
	}
}

// TestForeignObjectsAreNotOrphans: an orphan is a checkpoint's abandoned
// upload, so its objects are under a checkpoint's base key
// (docs/FORMAT.md). Objects that merely end in a checkpoint object's
// suffix — an operator's file in the vault's prefix, a key with too few or
// too many segments or a last segment no writer makes — are reported and
// never deleted, however old; so is an intent that names such a key. A real
// orphan in the same store still goes.
func TestForeignObjectsAreNotOrphans(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testForeignObjectsAreNotOrphans(t, b.new(t)) })
	}
}

func testForeignObjectsAreNotOrphans(t *testing.T, st Store) {
	ctx := context.Background()
	k := testKeys(t)
	put := func(key string) {
		t.Helper()
		if _, err := st.Put(ctx, key, strings.NewReader("x"), 1, store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	foreign := []string{
		"backup" + manifest.SuffixCiphertext,
		"ops/notes/readme" + manifest.SuffixManifestSig,
		"web/frontend-1/nginx/not-a-checkpoint" + manifest.SuffixCiphertext,
		"web/frontend-1/nginx/20261130T120000Z-node-a-00000000000000aa/extra" + manifest.SuffixCiphertext,
		"Web/frontend-1/nginx/20261130T120000Z-node-a-00000000000000aa" + manifest.SuffixCiphertext,
	}
	for _, key := range foreign {
		put(key)
	}
	orphan := putCheckpoint(t, st, k.signer, spec{ns: "web", pod: "frontend-1", ctr: "nginx", at: time.Now().Add(-time.Hour), seq: 2})
	dropAll(t, st, manifest.ObjectsFor(orphan).Manifest)
	// An intent at its own key that names a foreign base.
	body := []byte(`{"base":"backup","policy":"p","limit":"maxAge","reason":"r","actor":"a","time":"2026-11-30T12:00:00Z"}`)
	if _, err := st.Put(ctx, IntentKey("backup"), bytes.NewReader(body), int64(len(body)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}

	opts := Options{Policy: &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxAge: "720h"}, OrphanGrace: "1s"},
		Trusted: k.trusted, Actor: "gc-test", Audit: openLog(t), Now: func() time.Time { return time.Now().Add(time.Hour) }}
	plan, err := PlanRun(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Delete) != 1 || plan.Delete[0].Base != orphan {
		var got []string
		for _, a := range plan.Delete {
			got = append(got, a.Base)
		}
		t.Errorf("planned deletions %q, want only the orphan %s", got, orphan)
	}
	reported := map[string]string{}
	for _, p := range plan.Unverified {
		reported[p.Base] = p.Err
	}
	for _, key := range foreign {
		base, _ := manifest.BaseKeyOf(key)
		if !strings.Contains(reported[base], "not a checkpoint's") {
			t.Errorf("%s: reported as %q, want it named as not a checkpoint's key", base, reported[base])
		}
	}
	if p := reported[IntentKey("backup")]; !strings.Contains(p, "not a checkpoint's base key") {
		t.Errorf("the intent naming a foreign base: reported as %q", p)
	}
	if _, err := Execute(ctx, st, opts, plan); err != nil {
		t.Fatal(err)
	}
	for _, key := range append(foreign, IntentKey("backup")) {
		if _, err := st.Stat(ctx, key); err != nil {
			t.Errorf("%s after GC: %v", key, err)
		}
	}
}
