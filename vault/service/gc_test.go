package service

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/madmin-go/v3"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// roleStore creates a MinIO user with the named policies of
// deploy/bucket-policies (scoped to the env's bucket and prefix) and opens
// the env's store with its credentials.
func (e *env) roleStore(t *testing.T, user string, policies ...string) gc.Store {
	t.Helper()
	srv := testservers.Shared(t, testservers.MinIO)
	u, err := url.Parse(e.cfg.Store.URL)
	if err != nil {
		t.Fatal(err)
	}
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	adm := srv.Admin(t)
	ctx := context.Background()
	var names []string
	for _, p := range policies {
		b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "bucket-policies", p+".json"))
		if err != nil {
			t.Fatal(err)
		}
		doc := strings.ReplaceAll(string(b), "arn:aws:s3:::BUCKET", "arn:aws:s3:::"+bucket)
		doc = strings.ReplaceAll(doc, "PREFIX/", prefix+"/")
		name := "ckvault-" + p + "-" + prefix
		if err := adm.AddCannedPolicy(ctx, name, []byte(doc)); err != nil {
			t.Fatalf("policy %s: %v", p, err)
		}
		names = append(names, name)
	}
	secret := "secret-" + prefix + "-" + user
	if err := adm.AddUser(ctx, user, secret); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: names, User: user}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sc := e.cfg.Store
	sc.AccessKeyFile, sc.SecretKeyFile = filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	os.WriteFile(sc.AccessKeyFile, []byte(user+"\n"), 0o600)
	os.WriteFile(sc.SecretKeyFile, []byte(secret+"\n"), 0o600)
	st, err := storeconfig.Open(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.(gc.Store)
}

// restartWith replaces the env's server with one using st as its store and
// ret (nil: none) for retention.
func (e *env) restartWith(t *testing.T, st store.Store, ret *Retention, off string) {
	t.Helper()
	e.srv.Shutdown()
	srv, err := Start(context.Background(), e.cfg, Setup{Store: st, Trusted: e.keys.Trusted, Signer: e.keys.Signer, Retention: ret, RetentionOff: off})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() { srv.Shutdown() })
}

func exists(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	_, err := st.Stat(context.Background(), key)
	if err != nil && !errors.Is(err, store.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestGCThroughService, on MinIO with Object Lock and the real bucket
// policies: the service runs with the service role's credentials (read
// only) and retention with the GC role's. The verb gc (vault-wide) allows
// the plan and a run; others are refused and recorded; the plan is what
// the run deletes; every deletion is recorded under the caller's name. The
// same service handed its own credentials for retention cannot delete: the
// store refuses.
func TestGCThroughService(t *testing.T) {
	e := newVerbEnv(t, string(testservers.MinIO), "")
	svcStore := e.roleStore(t, "serve-test", "service")
	gcStore := e.roleStore(t, "gc-"+filepath.Base(e.dir), "gc")
	others := e.vaulted["other"]
	older, newer := others[0], others[1]
	if newer.CheckpointedAt.Before(older.CheckpointedAt.Time) {
		older, newer = newer, older
	}
	pol := &policy.RetentionConfig{Namespaces: map[string]policy.RetentionLimits{"other": {MaxCount: 1}}}
	e.cfg.Retention = pol
	e.restartWith(t, svcStore, &Retention{Store: gcStore, Options: gc.Options{Policy: pol, Trusted: e.keys.Trusted}}, "")

	for _, id := range []string{"alice", "rita", "pete", "nobody"} {
		for _, r := range []struct{ method, path string }{{"GET", "/v1/gc/plan"}, {"POST", "/v1/gc/runs"}} {
			a := e.send(e.client(id), r.method, r.path, nil)
			var body remote.Error
			json.Unmarshal(a.body, &body)
			if a.code != http.StatusForbidden || body.Verb != "gc" || body.Namespace != "" {
				t.Errorf("%s %s %s: %d %s, want 403 naming gc", id, r.method, r.path, a.code, a.body)
			}
		}
		if d := e.records(audit.Filter{Actor: "cert:" + id, Outcome: audit.Denied}); len(d) != 2 {
			t.Errorf("%s: %d denied records, want 2", id, len(d))
		}
	}
	if !exists(t, e.st, older.Objects().Manifest) {
		t.Fatal("a refused request deleted something")
	}

	gary := e.client("gary")
	a := e.send(gary, "GET", "/v1/gc/plan", nil)
	var plan remote.GCReport
	if a.code != 200 || json.Unmarshal(a.body, &plan) != nil || !plan.DryRun || len(plan.Plan.Delete) != 1 || plan.Plan.Delete[0].Base != older.Object {
		t.Fatalf("plan: %d %s", a.code, a.body)
	}
	if !exists(t, e.st, older.Objects().Manifest) {
		t.Fatal("the plan deleted something")
	}
	if a := e.send(gary, "GET", "/v1/gc/plan?dryRun=false", nil); a.code != 400 {
		t.Errorf("plan with a parameter: %d", a.code)
	}
	a = e.send(gary, "POST", "/v1/gc/runs", nil)
	var run remote.GCReport
	if a.code != 200 || json.Unmarshal(a.body, &run) != nil || run.DryRun || len(run.Deleted) != 1 || run.Deleted[0].Base != older.Object || len(run.Failed) != 0 {
		t.Fatalf("run: %d %s", a.code, a.body)
	}
	for _, k := range older.Objects().All() {
		if exists(t, e.st, k) {
			t.Errorf("%s survived the run", k)
		}
	}
	if !exists(t, e.st, newer.Objects().Manifest) || !exists(t, e.st, e.vaulted["payments"][0].Objects().Ciphertext) {
		t.Error("the run deleted what the policy keeps")
	}
	if recs := e.records(audit.Filter{Action: gc.ActionDeleted, Subject: older.Object}); len(recs) != 2 || recs[0].Actor != "cert:gary" {
		t.Errorf("deletion records: %+v", recs)
	}
	for _, action := range []string{ActionGCPlanned, ActionGCRequested} {
		if recs := e.records(audit.Filter{Action: action, Actor: "cert:gary"}); len(recs) != 2 || recs[1].Detail["planned"] != "1" {
			t.Errorf("%s records: %+v", action, recs)
		}
	}

	// Retention with the service's own credentials: the store refuses
	// (here a policy under which a payments checkpoint is due).
	pol2 := &policy.RetentionConfig{Namespaces: map[string]policy.RetentionLimits{"payments": {MaxCount: 1}}}
	e.cfg.Retention = pol2
	e.restartWith(t, svcStore, &Retention{Store: svcStore, Options: gc.Options{Policy: pol2, Trusted: e.keys.Trusted}}, "")
	a = e.send(gary, "POST", "/v1/gc/runs", nil)
	run = remote.GCReport{}
	if a.code != 200 || json.Unmarshal(a.body, &run) != nil || len(run.Plan.Delete) != 1 || len(run.Deleted) != 0 || len(run.Failed) != 1 ||
		!strings.Contains(run.Failed[0].Error, "access denied") {
		t.Errorf("GC with the service's read credentials: %d %s, want the deletion refused by the store", a.code, a.body)
	}
	for _, m := range e.vaulted["payments"] {
		for _, k := range m.Objects().All() {
			if !exists(t, e.st, k) {
				t.Errorf("GC with the service's read credentials deleted %s", k)
			}
		}
	}
}

// TestGCWithoutRetentionCredentials: a service without retention refuses
// GC with the reason it was given (after authorisation), and refuses to
// start with retention.interval.
func TestGCWithoutRetentionCredentials(t *testing.T) {
	e := newVerbEnv(t, "file", "")
	const why = "this service holds no retention credentials"
	e.restartWith(t, e.st, nil, why)
	for _, r := range []struct{ method, path string }{{"GET", "/v1/gc/plan"}, {"POST", "/v1/gc/runs"}} {
		if a := e.send(e.client("gary"), r.method, r.path, nil); a.code != http.StatusNotImplemented || !strings.Contains(string(a.body), why) {
			t.Errorf("%s %s without retention: %d %s", r.method, r.path, a.code, a.body)
		}
		if a := e.send(e.client("alice"), r.method, r.path, nil); a.code != http.StatusForbidden {
			t.Errorf("%s %s by alice: %d, want 403 before anything else", r.method, r.path, a.code)
		}
	}
	e.cfg.Retention = &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxCount: 1}, Interval: "1h"}
	e.srv.Shutdown()
	_, err := Start(context.Background(), e.cfg, Setup{Store: e.st, Trusted: e.keys.Trusted, Signer: e.keys.Signer, RetentionOff: why})
	if err == nil || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "retention.interval") {
		t.Errorf("Start with retention.interval and no retention: %v", err)
	}
}

// TestScheduledRetention: with retention.interval the running service
// applies retention on its own, recorded in its trail as
// RetentionActor; a run a caller asks for meanwhile is refused (409)
// rather than doubled.
func TestScheduledRetention(t *testing.T) {
	e := newVerbEnv(t, "file", "")
	pol := &policy.RetentionConfig{Namespaces: map[string]policy.RetentionLimits{"other": {MaxCount: 1}}, Interval: "50ms"}
	e.cfg.Retention = pol
	ret := &Retention{Store: e.st.(gc.Store), Options: gc.Options{Policy: pol, Trusted: e.keys.Trusted}}
	e.restartWith(t, e.st, ret, "")
	older := e.vaulted["other"][0]
	if e.vaulted["other"][1].CheckpointedAt.Before(older.CheckpointedAt.Time) {
		older = e.vaulted["other"][1]
	}
	// Busy: hold the run lock as a long run would.
	ret.mu.Lock()
	if a := e.send(e.client("gary"), "POST", "/v1/gc/runs", nil); a.code != http.StatusConflict {
		t.Errorf("run during a run: %d %s, want 409", a.code, a.body)
	}
	ret.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.srv.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for exists(t, e.st, older.Objects().Manifest) {
		if time.Now().After(deadline) {
			t.Fatal("the scheduled run did not delete the older checkpoint")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Let the run's outcome record land before the trail closes.
	time.Sleep(200 * time.Millisecond)
	recs := e.records(audit.Filter{Action: gc.ActionDeleted, Subject: older.Object})
	cancel()
	<-done
	if len(recs) != 2 || recs[0].Actor != RetentionActor {
		t.Errorf("scheduled deletion records: %+v", recs)
	}
}

// TestVerbsFailClosed: when the trail refuses the intent record, a restore
// report, a plan and a run are answered 503 and nothing is deleted.
func TestVerbsFailClosed(t *testing.T) {
	e := newVerbEnv(t, "file", "")
	pol := &policy.RetentionConfig{Namespaces: map[string]policy.RetentionLimits{"other": {MaxCount: 1}}}
	e.cfg.Retention = pol
	e.restartWith(t, e.st, &Retention{Store: e.st.(gc.Store), Options: gc.Options{Policy: pol, Trusted: e.keys.Trusted}}, "")
	if err := e.srv.Trail.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		who, method, path string
		body              []byte
	}{
		{"rita", "POST", "/v1/restores/" + e.vaulted["payments"][0].Object, mustJSON(okReport())},
		{"gary", "GET", "/v1/gc/plan", nil},
		{"gary", "POST", "/v1/gc/runs", nil},
	} {
		a := e.send(e.client(r.who), r.method, r.path, r.body)
		if a.code != http.StatusServiceUnavailable || a.hdr.Get("Retry-After") == "" || strings.Contains(string(a.body), `"plan"`) {
			t.Errorf("%s %s with a closed trail: %d %s, want 503 and nothing else", r.method, r.path, a.code, a.body)
		}
	}
	for _, m := range e.vaulted["other"] {
		if !exists(t, e.st, m.Objects().Manifest) {
			t.Errorf("%s was deleted while the trail was closed", m.Object)
		}
	}
}
