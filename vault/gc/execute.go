package gc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// Audit actions GC records.
const (
	ActionRun     = "gc"       // one run: intent, then outcome with counts
	ActionDeleted = "deleted"  // one base key's versions: intent, then outcome
	ActionPinned  = "pinned"   // ckvault pin
	ActionUnpin   = "unpinned" // ckvault unpin
)

// Result is what Execute did.
type Result struct {
	// Deleted are the actions carried out completely.
	Deleted []Action
	// Failed are actions that stopped part-way or never started, with the
	// error; an intent left in the store makes the next run finish them.
	Failed []Failure
	// Versions and Bytes count what was deleted.
	Versions int
	Bytes    int64
}

// Failure is an action that did not complete.
type Failure struct {
	Action Action
	Err    error
}

// Execute carries out plan.Delete. Each action is independent: a failed
// one is reported and the others go on. The run itself is audited.
func Execute(ctx context.Context, st Store, opts Options, plan *Plan) (*Result, error) {
	if opts.Audit == nil {
		return nil, errors.New("gc: no audit trail: every deletion is recorded, so GC refuses to run without one")
	}
	run := audit.Record{Actor: opts.Actor, Action: ActionRun, Subject: st.Describe(), Outcome: audit.OK,
		Detail: map[string]string{"phase": "intent", "planned": strconv.Itoa(len(plan.Delete))}}
	if opts.BypassGovernance {
		run.Detail["bypassGovernance"] = "true"
	}
	if _, err := opts.Audit.Append(ctx, run); err != nil {
		return nil, fmt.Errorf("gc: recording the run in the audit trail: %w; nothing was deleted", err)
	}
	res := &Result{}
	for _, h := range plan.Abandon {
		rec := audit.Record{Actor: opts.Actor, Action: ActionDeleted, Subject: h.Base, Outcome: audit.Error,
			Detail: map[string]string{"phase": "abandoned", "policy": h.Policy, "reason": clip(h.Why)}}
		rec.Namespace, rec.Pod, rec.Container = keyIdentity(h.Base)
		if _, err := opts.Audit.Append(ctx, rec); err != nil {
			return res, fmt.Errorf("gc: recording that the deletion of %s is abandoned: %w", h.Base, err)
		}
		if err := removeAll(ctx, st, h.intentKey); err != nil {
			return res, fmt.Errorf("gc: removing the abandoned intent of %s: %w", h.Base, err)
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, opts.concurrency())
	var wg sync.WaitGroup
	for _, a := range plan.Delete {
		wg.Add(1)
		sem <- struct{}{}
		go func(a Action) {
			defer wg.Done()
			defer func() { <-sem }()
			n, b, err := deleteOne(ctx, st, &opts, a)
			mu.Lock()
			defer mu.Unlock()
			res.Versions += n
			res.Bytes += b
			if err != nil {
				res.Failed = append(res.Failed, Failure{Action: a, Err: err})
				return
			}
			res.Deleted = append(res.Deleted, a)
		}(a)
	}
	wg.Wait()
	sortActions(res.Deleted)
	out := run
	out.Detail = map[string]string{"deleted": strconv.Itoa(len(res.Deleted)), "failed": strconv.Itoa(len(res.Failed)),
		"versions": strconv.Itoa(res.Versions), "bytes": strconv.FormatInt(res.Bytes, 10)}
	if len(res.Failed) > 0 {
		out.Outcome = audit.Error
	}
	if _, err := opts.Audit.Append(context.WithoutCancel(ctx), out); err != nil {
		return res, fmt.Errorf("gc: recording the end of the run: %w", err)
	}
	return res, nil
}

func sortActions(as []Action) {
	for i := 1; i < len(as); i++ {
		for j := i; j > 0 && as[j].Base < as[j-1].Base; j-- {
			as[j], as[j-1] = as[j-1], as[j]
		}
	}
}

func (o *Options) hook(step string) {
	if o.testHook != nil {
		o.testHook(step)
	}
}

// deleteOne deletes every version of one base key in deletion order,
// between a durable intent (object and audit record) and an outcome
// record. See the package doc for why this order.
func deleteOne(ctx context.Context, st Store, opts *Options, a Action) (versions int, nbytes int64, err error) {
	rec := audit.Record{Actor: opts.Actor, Action: ActionDeleted, Subject: a.Base,
		Namespace: a.Namespace, Pod: a.Pod, Container: a.Container, Outcome: audit.OK,
		Detail: map[string]string{"policy": a.Policy, "limit": a.Limit, "reason": clip(a.Reason),
			"versions": strconv.Itoa(len(a.Versions))}}
	if a.Bypass != "" {
		rec.Detail["bypass"] = a.Bypass
	}

	// 1. The intent, durable in the store (where every later run looks)
	// and in the audit trail.
	ikey := IntentKey(a.Base)
	if a.intentKey != "" {
		ikey = a.intentKey // an unfinished deletion's, possibly under LegacyIntentPrefix
	}
	body, err := json.Marshal(intent{Base: a.Base, Policy: a.Policy, Limit: a.Limit, Reason: a.Reason, Actor: opts.Actor, Time: opts.now().UTC()})
	if err != nil {
		return 0, 0, err
	}
	intentVersion := a.intentVersion
	if a.Limit != LimitUnfinished {
		oi, err := st.Put(ctx, ikey, bytes.NewReader(body), int64(len(body)), store.PutOptions{ContentType: "application/json"})
		if err != nil {
			return 0, 0, fmt.Errorf("gc: %s: writing the intent %s: %w; nothing was deleted", a.Base, ikey, err)
		}
		intentVersion = oi.VersionID
	} // else the intent is already there; keep it (and its reason) as is

	opts.hook("intent-object")
	intentRec := rec
	intentRec.Detail = withPhase(rec.Detail, "intent")
	if _, err := opts.Audit.Append(ctx, intentRec); err != nil {
		return 0, 0, fmt.Errorf("gc: %s: recording the intent in the audit trail: %w; nothing was deleted (the intent object stays; the next run retries)", a.Base, err)
	}
	opts.hook("intent-record")

	// 2, 3. The versions, manifest first.
	del := store.DeleteOptions{BypassGovernance: a.Bypass == "governance"}
	for _, v := range a.Versions {
		if err := st.DeleteVersion(ctx, v.Key, v.VersionID, del); err != nil {
			fail := rec
			fail.Outcome = audit.Error
			fail.Detail = withPhase(rec.Detail, "outcome")
			fail.Detail["error"] = clip(err.Error())
			fail.Detail["deleted"] = strconv.Itoa(versions)
			opts.Audit.Append(context.WithoutCancel(ctx), fail)
			return versions, nbytes, fmt.Errorf("gc: %s: deleting %s version %q: %w (the intent %s stays; the next run finishes it)", a.Base, v.Key, v.VersionID, err, ikey)
		}
		versions++
		nbytes += v.Size
		opts.hook("deleted " + v.Key)
	}

	// 4. The outcome, then the intent goes.
	done := rec
	done.Detail = withPhase(rec.Detail, "outcome")
	done.Detail["bytes"] = strconv.FormatInt(nbytes, 10)
	if _, err := opts.Audit.Append(ctx, done); err != nil {
		return versions, nbytes, fmt.Errorf("gc: %s: recording the deletion in the audit trail: %w (the intent %s stays; the next run records it)", a.Base, err, ikey)
	}
	opts.hook("outcome-record")
	if err := st.DeleteVersion(ctx, ikey, intentVersion, store.DeleteOptions{}); err != nil {
		return versions, nbytes, fmt.Errorf("gc: %s: removing the finished intent %s: %w", a.Base, ikey, err)
	}
	opts.hook("intent-removed")
	return versions, nbytes, nil
}

// removeAll deletes every version of key.
func removeAll(ctx context.Context, st Store, key string) error {
	var vs []store.Version
	err := st.ListVersions(ctx, key, func(v store.Version) error {
		if v.Key == key {
			vs = append(vs, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, v := range vs {
		if err := st.DeleteVersion(ctx, v.Key, v.VersionID, store.DeleteOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func withPhase(d map[string]string, phase string) map[string]string {
	out := make(map[string]string, len(d)+3)
	for k, v := range d {
		out[k] = v
	}
	out["phase"] = phase
	return out
}

// clip keeps a detail value within the audit record's field limit.
func clip(s string) string {
	if len(s) > audit.MaxFieldLen {
		return s[:audit.MaxFieldLen-3] + "..."
	}
	return s
}

// Run is one complete retention run — PlanRun, then Execute unless dryRun —
// as `ckvault gc` does it and as a scheduler (`ckvault serve` with
// retention.interval) calls it. The result is nil for a dry run.
func Run(ctx context.Context, st Store, opts Options, dryRun bool) (*Plan, *Result, error) {
	plan, err := PlanRun(ctx, st, opts)
	if err != nil || dryRun {
		return plan, nil, err
	}
	res, err := Execute(ctx, st, opts, plan)
	return plan, res, err
}
