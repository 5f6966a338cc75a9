package deploy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/s3store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testservers.Main(m)) }

// TestBucketPolicies applies deploy/bucket-policies to MinIO through its
// admin API, creates one identity per role, and exercises each through the
// product's own s3store: a node writes and reads back only its own objects
// and cannot delete; the service reads everything and writes only its own
// audit segments; GC deletes versions only once retention has ended — it
// cannot bypass governance without the extra policy, and nobody, with or
// without it, bypasses compliance; GC writes only its own audit segments
// and deletes none.
func TestBucketPolicies(t *testing.T) {
	srv := testservers.Shared(t, testservers.MinIO)
	ctx := context.Background()
	prefix := strings.TrimSuffix(storetest.RandomPrefix(), "/")
	adm := srv.Admin(t)

	policies := map[string]string{}
	for _, name := range []string{"node", "service", "gc", "gc-bypass-governance"} {
		b, err := os.ReadFile(filepath.Join("bucket-policies", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		doc := strings.ReplaceAll(string(b), "arn:aws:s3:::BUCKET", "arn:aws:s3:::"+srv.Bucket)
		doc = strings.ReplaceAll(doc, "PREFIX/", prefix+"/")
		pname := "ckvault-" + name + "-" + prefix
		if err := adm.AddCannedPolicy(ctx, pname, []byte(doc)); err != nil {
			t.Fatalf("MinIO refuses bucket-policies/%s.json: %v", name, err)
		}
		policies[name] = pname
	}
	user := func(name string, pols ...string) *s3store.Store {
		secret := "secret-" + prefix + "-" + name
		if err := adm.AddUser(ctx, name, secret); err != nil {
			t.Fatalf("add user %s: %v", name, err)
		}
		var ps []string
		for _, p := range pols {
			ps = append(ps, policies[p])
		}
		if _, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: ps, User: name}); err != nil {
			t.Fatalf("attach %v to %s: %v", ps, name, err)
		}
		s, err := s3store.New(s3store.Config{URL: srv.StoreURL(srv.Bucket, prefix), CAFile: srv.CAFile, PathStyle: "path",
			Credentials: credentials.NewStaticV4(name, secret, ""), BaseDelay: 10e6, Attempts: 1, RequireObjectLock: true})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	nodeA := user("node-a", "node")
	service := user("ckvault-service", "service")
	gcUser := user("ckvault-gc", "gc")
	gcBypass := user("ckvault-gc-bypass", "gc", "gc-bypass-governance")

	put := func(s store.Store, key string, ret store.Retention) error {
		data := []byte("bytes of " + key)
		_, err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), store.PutOptions{Retention: ret})
		return err
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want access denied", what)
		} else if !errors.Is(err, store.ErrPermanent) && !errors.Is(err, store.ErrLocked) {
			t.Errorf("%s: %v, want access denied", what, err)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}

	// Nodes: their own objects only, never a delete.
	until := time.Now().Add(6 * time.Second).Truncate(time.Second).Add(time.Second)
	own := "payments/api-0/api/20261130T120000Z-node-a-0123456789ab"
	compliance := own + ".tar.age"
	governance := "payments/api-0/api/20261130T120001Z-node-a-0123456789ac.tar.age"
	allowed("node puts its checkpoint under compliance retention", put(nodeA, compliance, store.Retention{Mode: "compliance", Until: until}))
	allowed("node puts its checkpoint under governance retention", put(nodeA, governance, store.Retention{Mode: "governance", Until: until}))
	allowed("node puts a manifest", put(nodeA, own+".manifest.json", store.Retention{}))
	_, err := nodeA.Stat(ctx, compliance)
	allowed("node reads back its object", err)
	allowed("node checks the bucket", nodeA.Check(ctx))
	allowed("node exports its audit segment", put(nodeA, "audit/node-a/00000000000000000001-00000000000000000002.jsonl", store.Retention{}))
	denied("node puts another node's checkpoint", put(nodeA, "payments/api-0/api/20261130T120000Z-node-b-0123456789ab.tar.age", store.Retention{}))
	allowed("node puts a v2 checkpoint's object", put(nodeA, "payments/api-0/api/20261130T120002Z-node-a-0123456789abcdef.manifest.sigstore.json", store.Retention{}))
	// S3's * matches anything, "/" included: "*-node-a-*" also matched the
	// keys of a node whose name extends node-a's, and of any node's
	// checkpoints of a pod a tenant named with "-node-a-" in it.
	denied("node puts a checkpoint of a node whose name extends its own", put(nodeA, "payments/api-0/api/20261130T120000Z-node-a-1-0123456789abcdef.tar.age", store.Retention{}))
	denied("node puts another node's checkpoint of a pod named after it", put(nodeA, "payments/web-node-a-1/web/20261130T120000Z-node-b-0123456789abcdef.manifest.json", store.Retention{}))
	denied("node puts another node's audit segment", put(nodeA, "audit/node-b/00000000000000000001-00000000000000000002.jsonl", store.Retention{}))
	denied("node puts outside the layout", put(nodeA, "elsewhere", store.Retention{}))
	denied("node deletes (delete marker) its own manifest", nodeA.Delete(ctx, own+".manifest.json", ""))
	vManifest := latestVersion(t, gcUser, own+".manifest.json")
	denied("node deletes a version of its own manifest", nodeA.DeleteVersion(ctx, own+".manifest.json", vManifest, store.DeleteOptions{}))

	// The service: reads all, writes only its own audit segments.
	if _, _, err := service.List(ctx, "", "", 0); err != nil {
		t.Errorf("service lists: %v", err)
	}
	o, err := service.Open(ctx, compliance)
	allowed("service reads a node's ciphertext", err)
	if o != nil {
		o.Close()
	}
	allowed("service exports its audit segment", put(service, "audit/ckvault-service/00000000000000000001-00000000000000000002.jsonl", store.Retention{}))
	allowed("a service replica exports its own trail", put(service, "audit/ckvault-service-1/00000000000000000001-00000000000000000002.jsonl", store.Retention{}))
	denied("service puts a checkpoint", put(service, "payments/api-0/api/20261130T120000Z-ckvault-service-0123456789ab.tar.age", store.Retention{}))
	denied("service puts a node's audit segment", put(service, "audit/node-a/00000000000000000003-00000000000000000004.jsonl", store.Retention{}))
	denied("service deletes", service.DeleteVersion(ctx, own+".manifest.json", vManifest, store.DeleteOptions{}))
	denied("service adds a delete marker", service.Delete(ctx, own+".manifest.json", ""))
	denied("service overwrites a node's checkpoint", put(service, compliance, store.Retention{}))
	// Pins through the service (verb pin): legal holds on checkpoint
	// objects, never on the audit trail.
	allowed("service pins a node's manifest", service.SetLegalHold(ctx, own+".manifest.json", true))
	if l, err := gcUser.VersionLock(ctx, own+".manifest.json", vManifest); err != nil || !l.LegalHold {
		t.Errorf("the service's pin is not on the version: %+v, %v", l, err)
	}
	denied("service deletes a pinned version", service.DeleteVersion(ctx, own+".manifest.json", vManifest, store.DeleteOptions{}))
	allowed("service unpins it", service.SetLegalHold(ctx, own+".manifest.json", false))
	denied("service sets a hold on an audit segment", service.SetLegalHold(ctx, "audit/node-a/00000000000000000001-00000000000000000002.jsonl", true))
	denied("service lifts a hold on its own audit segment", service.SetLegalHold(ctx, "audit/ckvault-service/00000000000000000001-00000000000000000002.jsonl", false))
	// A Kubernetes namespace may be named "audit": its checkpoints are
	// checkpoints, and may be pinned.
	inAudit := "audit/api-0/api/20261130T120000Z-node-a-0123456789ab.manifest.json"
	allowed("node puts a checkpoint of namespace audit", put(nodeA, inAudit, store.Retention{}))
	allowed("service pins a checkpoint of namespace audit", service.SetLegalHold(ctx, inAudit, true))
	allowed("service unpins it", service.SetLegalHold(ctx, inAudit, false))

	// GC: versions go only once retention has ended.
	vc, vg := latestVersion(t, gcUser, compliance), latestVersion(t, gcUser, governance)
	if l, err := gcUser.VersionLock(ctx, compliance, vc); err != nil || l.Mode != "compliance" {
		t.Errorf("gc reads the lock: %+v, %v", l, err)
	}
	denied("gc deletes a compliance-locked version", gcUser.DeleteVersion(ctx, compliance, vc, store.DeleteOptions{}))
	denied("gc bypasses compliance", gcUser.DeleteVersion(ctx, compliance, vc, store.DeleteOptions{BypassGovernance: true}))
	denied("gc bypasses governance without the bypass policy", gcUser.DeleteVersion(ctx, governance, vg, store.DeleteOptions{BypassGovernance: true}))
	denied("gc with the bypass policy bypasses compliance", gcBypass.DeleteVersion(ctx, compliance, vc, store.DeleteOptions{BypassGovernance: true}))
	allowed("gc with the bypass policy bypasses governance", gcBypass.DeleteVersion(ctx, governance, vg, store.DeleteOptions{BypassGovernance: true}))
	intentKey := "ckvault.gc/intents/payments/api-0/api/20261130T120000Z-node-a-0123456789ab.intent"
	allowed("gc writes an intent", put(gcUser, intentKey, store.Retention{}))
	denied("gc writes a checkpoint", put(gcUser, "payments/api-0/api/20261130T120000Z-ckvault-gc-0123456789ab.tar.age", store.Retention{}))
	seg := "audit/node-a/00000000000000000001-00000000000000000002.jsonl"
	denied("gc deletes an audit segment", gcUser.DeleteVersion(ctx, seg, latestVersion(t, gcUser, seg), store.DeleteOptions{}))
	// gc exports its own trail (node: ckvault-gc), and can delete none of it.
	ownSeg := "audit/ckvault-gc/00000000000000000001-00000000000000000002.jsonl"
	allowed("gc exports its audit segment under retention", put(gcUser, ownSeg, store.Retention{Mode: "governance", Until: until}))
	// ...and reads its trail back (the name check before a run, and
	// Export's byte comparison after an interrupted one).
	if objs, _, err := gcUser.List(ctx, "audit/ckvault-gc/", "", 1); err != nil || len(objs) != 1 {
		t.Errorf("gc lists its audit segments: %v %v", objs, err)
	}
	if o, err := gcUser.Open(ctx, ownSeg); err != nil {
		t.Errorf("gc reads its audit segment: %v", err)
	} else {
		o.Close()
	}
	denied("gc puts a node's audit segment", put(gcUser, "audit/node-a/00000000000000000003-00000000000000000004.jsonl", store.Retention{}))
	denied("gc deletes its own audit segment", gcUser.DeleteVersion(ctx, ownSeg, latestVersion(t, gcUser, ownSeg), store.DeleteOptions{}))
	denied("gc bypasses governance on its own audit segment", gcBypass.DeleteVersion(ctx, ownSeg, latestVersion(t, gcUser, ownSeg), store.DeleteOptions{BypassGovernance: true}))
	allowed("gc deletes an unlocked version", gcUser.DeleteVersion(ctx, own+".manifest.json", vManifest, store.DeleteOptions{}))

	// Kubernetes namespaces named "audit" and "gc": their keys start like
	// the audit trail's segments (audit/<node>/…) and like the intents of
	// older versions (gc/intents/…), and they are checkpoints all the same.
	// Retention deletes and pins a namespace audit's checkpoints, never a
	// segment; no role's own-segment grant reaches a checkpoint whose pod
	// is named like that role's trail; GC cannot write a namespace gc's
	// checkpoints, and nodes cannot write GC's intents.
	nsAudit := "audit/ckvault-gc/app/20261130T120000Z-node-a-0123456789ab.tar.age"
	allowed("node puts a checkpoint of namespace audit, pod ckvault-gc, under compliance retention", put(nodeA, nsAudit, store.Retention{Mode: "compliance", Until: until}))
	vAudit := latestVersion(t, gcUser, nsAudit)
	denied("gc deletes a checkpoint of namespace audit under retention", gcUser.DeleteVersion(ctx, nsAudit, vAudit, store.DeleteOptions{}))
	denied("gc puts a checkpoint of namespace audit whose pod is named like gc's trail", put(gcUser, "audit/ckvault-gc/app/20261130T120000Z-node-a-0123456789ad.tar.age", store.Retention{}))
	denied("service puts a checkpoint of namespace audit whose pod is named like its trail", put(service, "audit/ckvault-service/app/20261130T120000Z-node-a-0123456789ab.tar.age", store.Retention{}))
	denied("node puts another node's checkpoint of namespace audit whose pod is named like its trail", put(nodeA, "audit/node-a/app/20261130T120000Z-node-b-0123456789ab.tar.age", store.Retention{}))
	allowed("gc pins a checkpoint of namespace audit", gcUser.SetLegalHold(ctx, nsAudit, true))
	allowed("gc unpins it", gcUser.SetLegalHold(ctx, nsAudit, false))
	denied("gc sets a hold on an audit segment", gcUser.SetLegalHold(ctx, seg, true))
	denied("gc overwrites an audit segment", put(gcUser, seg, store.Retention{}))
	nsGC := "gc/intents/app/20261130T120000Z-node-a-0123456789ab.tar.age"
	allowed("node puts a checkpoint of namespace gc, pod intents", put(nodeA, nsGC, store.Retention{}))
	denied("gc puts a checkpoint of namespace gc, pod intents", put(gcUser, nsGC, store.Retention{}))
	denied("gc puts an intent where older versions did", put(gcUser, "gc/intents/payments/api-0/api/20261130T120000Z-node-a-0123456789ab.intent", store.Retention{}))
	denied("node puts a GC intent for its own checkpoint", put(nodeA, intentKey, store.Retention{}))
	denied("node puts a GC intent where older versions did", put(nodeA, "gc/intents/payments/api-0/api/20261130T120000Z-node-a-0123456789ab.intent", store.Retention{}))
	// GC takes any key there with more than three "/" and the suffix for an
	// intent (legacyIntent), and the node's own-objects grant matches this
	// one (S3's * crosses "/"): a node wrote an intent GC had to read.
	denied("node puts an intent-shaped key under gc/intents/ with four slashes", put(nodeA, "gc/intents/a/b/c-node-a-x.intent", store.Retention{}))
	denied("service sets a hold on a GC intent", service.SetLegalHold(ctx, intentKey, true))
	allowed("gc removes its finished intent", gcUser.DeleteVersion(ctx, intentKey, latestVersion(t, gcUser, intentKey), store.DeleteOptions{}))
	root, err := s3store.New(s3store.Config{URL: srv.StoreURL(srv.Bucket, prefix), CAFile: srv.CAFile, PathStyle: "path",
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), BaseDelay: 10e6, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	legacy := "gc/intents/payments/api-0/api/20261130T120001Z-node-a-0123456789ac.intent"
	allowed("an older version's intent (written as root here)", put(root, legacy, store.Retention{}))
	allowed("gc removes an older version's intent", gcUser.DeleteVersion(ctx, legacy, latestVersion(t, gcUser, legacy), store.DeleteOptions{}))

	time.Sleep(time.Until(until) + 1500*time.Millisecond)
	allowed("gc deletes a version whose compliance retention ended", gcUser.DeleteVersion(ctx, compliance, vc, store.DeleteOptions{}))
	allowed("gc deletes an expired checkpoint of namespace audit", gcUser.DeleteVersion(ctx, nsAudit, vAudit, store.DeleteOptions{}))
	denied("gc deletes an audit segment whose retention ended", gcUser.DeleteVersion(ctx, ownSeg, latestVersion(t, gcUser, ownSeg), store.DeleteOptions{}))
}

func latestVersion(t *testing.T, s *s3store.Store, key string) string {
	t.Helper()
	id := ""
	err := s.ListVersions(context.Background(), key, func(v store.Version) error {
		if v.Key == key && v.IsLatest {
			id = v.VersionID
		}
		return nil
	})
	if err != nil || id == "" {
		t.Fatalf("latest version of %s: %q, %v", key, id, err)
	}
	return id
}
