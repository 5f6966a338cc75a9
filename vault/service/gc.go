package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// Retention is GC as the service runs it: on a schedule
// (retention.interval) and on request (verb gc). Store must be opened with
// the retention role's credentials (retention.accessKeyFile/secretKeyFile,
// deploy/bucket-policies/gc.json), never the service's own, which only
// read. One run at a time: a request during a run is answered 409.
type Retention struct {
	Store gc.Store
	// Options: Policy, Trusted, BypassGovernance, Logger; Actor and Audit
	// are set per run.
	Options gc.Options
	mu      sync.Mutex
}

// ErrGCBusy: a retention run is in progress.
var ErrGCBusy = errors.New("a retention run is in progress; retry when it ends")

// Run plans (dryRun) or plans and executes one retention run, recorded in
// au under actor.
func (r *Retention) Run(ctx context.Context, actor string, au gc.Auditor, dryRun bool) (*gc.Plan, *gc.Result, error) {
	if !r.mu.TryLock() {
		return nil, nil, ErrGCBusy
	}
	defer r.mu.Unlock()
	o := r.Options
	o.Actor, o.Audit = actor, au
	return gc.Run(ctx, r.Store, o, dryRun)
}

// Audit actions of the GC endpoints (the run's own records are gc.ActionRun
// and gc.ActionDeleted, under the caller's name).
const (
	ActionGCPlanned   = "gc-planned"
	ActionGCRequested = "gc-requested"
)

// handleGC answers GET /v1/gc/plan (what a run would delete, and why) and
// POST /v1/gc/runs (run now). Verb gc, vault-wide (namespace "").
func (s *Service) handleGC(q *request) error {
	dryRun := q.r.Method == http.MethodGet
	if len(q.r.URL.RawQuery) > 0 {
		return q.fail(badRequest("the retention endpoints take no parameters; the policy is the service's retention: section"))
	}
	if !q.authorize("gc", "", "retention") {
		return nil
	}
	if s.retention == nil {
		writeError(q.w, http.StatusNotImplemented, remote.Error{Error: s.retentionOff})
		return nil
	}
	action := ActionGCRequested
	if dryRun {
		action = ActionGCPlanned
	}
	if !q.begin(action, "retention", "", nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	// A run that has started finishes even if the caller goes away: each
	// deletion is crash-safe, but a run cut short leaves work for the next.
	plan, res, err := s.retention.Run(context.WithoutCancel(q.r.Context()), q.id.Actor(), s.audit, dryRun)
	switch {
	case errors.Is(err, ErrGCBusy):
		writeError(q.w, http.StatusConflict, remote.Error{Error: err.Error()})
		return nil
	case plan == nil:
		failure = err
		writeError(q.w, http.StatusBadGateway, remote.Error{Error: fmt.Sprintf("planning retention: %v", err)})
		return err
	}
	rep := remote.NewGCReport(dryRun, plan, res, err)
	q.rec.Detail["planned"] = strconv.Itoa(len(plan.Delete))
	if res != nil {
		q.rec.Detail["deleted"] = strconv.Itoa(len(res.Deleted))
		q.rec.Detail["failed"] = strconv.Itoa(len(res.Failed))
	}
	failure = err
	if e := writeJSON(q.w, rep); e != nil && failure == nil {
		failure = e
	}
	return failure
}
