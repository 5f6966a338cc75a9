package service

import (
	"context"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

// TestClientListsNamespaceNamedAudit: through the service client
// (remote.Store), a listing of a Kubernetes namespace named "audit" — the
// store prefix audit/ or audit/<pod>/, which the exported audit segments
// share — lists that namespace's checkpoints, as a listing from the store
// does, for a caller who may list there and holds no audit verb; and an
// auditor still reads the exported trail through the same client, with
// no finding for the namespace's checkpoints.
func TestClientListsNamespaceNamedAudit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: redteamRoles})
	e.issue(t, "dave", "dave")
	m := e.vaultInNamespace(t, "audit", "web-0", 99)
	log, err := audit.Open(laptopTrail(t), audit.Options{Node: "laptop"})
	must(t, err)
	defer log.Close()
	r := &responder.Responder{Store: e.remote("dave"), Trusted: e.keys.Trusted, Audit: log, Actor: "dave"}
	for _, o := range []responder.ListOptions{
		{Namespace: "audit"},
		{Namespace: "audit", Pod: "web-0"},
		{Namespace: "audit", Pod: "web-0", Container: "app"},
	} {
		ents, err := r.List(ctx, o)
		if err != nil || len(ents) != 1 || ents[0].Base != m.Object || ents[0].Problem != nil {
			t.Errorf("dave lists %+v through the service client: %v, %d entries (%+v), want %s verified", o, err, len(ents), ents, m.Object)
		}
	}

	e.srv.Export(ctx)
	trail, err := audit.ReadStore(ctx, e.remote("auditor"), e.keys.Trusted.DER())
	if err != nil {
		t.Fatal(err)
	}
	if !trail.Report.OK() || len(trail.Nodes[e.cfg.Node]) == 0 {
		t.Errorf("the auditor reads the service's exported trail through the client: ok=%v findings=%v nodes=%d", trail.Report.OK(), trail.Report.Findings, len(trail.Nodes))
	}
	// dave may not read the trail, through the client either.
	if _, err := audit.ReadStore(ctx, e.remote("dave"), e.keys.Trusted.DER()); err == nil {
		t.Error("dave read the audit segments")
	}
}
