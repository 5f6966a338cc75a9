// Package trigger asks a kubelet for a container checkpoint and follows it
// until the node daemon has vaulted it (`ckvault checkpoint`).
//
// # The request
//
// The kubelet's checkpoint API is called directly, on the node's
// authenticated port (Kubelet), with a client certificate or a bearer token
// that needs only create on nodes/checkpoint. The kubelet's serving
// certificate is verified. Each answer maps to one error that says what to
// do (401, 403, 404, 500, timeouts); only failures where nothing reached
// the kubelet, and 429/503, are retried: a checkpoint is not idempotent,
// and two in one second would even get the same file name.
//
// # Following the archive
//
// The kubelet answers with the archive's path on the node. The daemon
// there vaults it under a key that names the node and whose manifest
// records the file's base name, so Wait watches the store for a manifest
// with that name from that node, and verifies it (signature, key binding)
// before reporting its id. Where the node daemon's audit trail can be
// read (on the node itself, through its socket), Wait also reports at once
// a "skipped" (namespace policy) or "rejected" record for the file, and a
// daemon that has not even detected it within a bound; elsewhere a daemon
// that is not running shows as a timeout naming that possibility.
//
// # Audit
//
// Three records, each durable before the next step: checkpoint-requested
// (who, which container, which kubelet) before the kubelet is called,
// checkpoint-answered (the kubelet's answer: the archive's path, or the
// error), and checkpoint-vaulted (the vault id and object, or why not).
// The latter two carry the archive's base name as their subject, which is
// the daemon's subject for the same file, so one audit query shows the
// whole story.
package trigger

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// Auditor records what the trigger does; Append returns only once the
// record is durable (as responder.Auditor).
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// Audit actions.
const (
	ActionRequested = "checkpoint-requested"
	ActionAnswered  = "checkpoint-answered"
	ActionVaulted   = "checkpoint-vaulted"
)

// Trigger checkpoints one container and waits for its vaulting.
type Trigger struct {
	Kubelet *Kubelet
	// Timeout is the kubelet's (the runtime's) time limit for the dump.
	Timeout time.Duration
	Wait    WaitOptions
	Audit   Auditor
	// Actor names the person in audit records.
	Actor string
	// LockDir holds the per-container lock files (see Lock); "" disables
	// locking.
	LockDir string
}

// Result is a vaulted checkpoint the trigger asked for.
type Result struct {
	Target
	Node string
	// Archive is the path on the node, as the kubelet answered.
	Archive string
	Vaulted
	// Requested is when the kubelet was asked; Answered when it answered;
	// Proven when the vaulted checkpoint was found and verified.
	Requested, Answered, Proven time.Time
}

// CheckTarget refuses names Kubernetes itself would refuse.
func CheckTarget(t Target) error {
	return errors.Join(k8sname.Namespace.Check(t.Namespace), k8sname.Pod.Check(t.Pod), k8sname.Container.Check(t.Container))
}

// Run checkpoints t through tr.Kubelet and waits until the archive is
// vaulted. The Result is returned as far as it got, also with an error.
func (tr *Trigger) Run(ctx context.Context, t Target) (*Result, error) {
	if err := CheckTarget(t); err != nil {
		return nil, err
	}
	if tr.Audit == nil {
		return nil, errors.New("no audit trail configured; refusing to trigger a checkpoint unaudited")
	}
	res := &Result{Target: t, Node: tr.Kubelet.Node}
	if tr.LockDir != "" {
		unlock, err := Lock(tr.LockDir, t)
		if err != nil {
			return res, err
		}
		defer unlock()
	}
	rec := audit.Record{Actor: tr.Actor, Namespace: t.Namespace, Pod: t.Pod, Container: t.Container, Outcome: audit.OK}
	req := rec
	req.Action, req.Subject = ActionRequested, t.String()
	req.Detail = map[string]string{"kubelet": tr.Kubelet.URL.String(), "node": tr.Kubelet.Node,
		"timeoutSeconds": strconv.Itoa(int(tr.Timeout.Seconds()))}
	if _, err := tr.Audit.Append(ctx, req); err != nil {
		return res, fmt.Errorf("recording the request in the audit trail: %w; the kubelet was not asked", err)
	}
	// The answer and the outcome are recorded even if ctx is cancelled.
	rctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}
	res.Requested = time.Now()
	archive, kerr := tr.Kubelet.Checkpoint(ctx, t, tr.Timeout)
	res.Answered, res.Archive = time.Now(), archive
	ans := rec
	ans.Action, ans.Subject = ActionAnswered, t.String()
	ans.Detail = map[string]string{"kubelet": tr.Kubelet.URL.String(), "node": tr.Kubelet.Node,
		"seconds": seconds(res.Answered.Sub(res.Requested))}
	if kerr != nil {
		ans.Outcome = audit.Error
		ans.Detail["reason"] = clip(kerr.Error())
	} else {
		ans.Subject = path.Base(archive)
		ans.Detail["archive"] = archive
	}
	c, cancel := rctx()
	_, aerr := tr.Audit.Append(c, ans)
	cancel()
	if kerr != nil {
		if aerr != nil {
			return res, fmt.Errorf("%w (and recording the answer in the audit trail failed: %v)", kerr, aerr)
		}
		return res, kerr
	}
	if aerr != nil {
		return res, fmt.Errorf("the kubelet wrote %s on node %s, but recording that in the audit trail failed: %w", archive, tr.Kubelet.Node, aerr)
	}

	v, werr := Wait(ctx, tr.Wait, t, tr.Kubelet.Node, path.Base(archive))
	res.Proven = time.Now()
	out := rec
	out.Action, out.Subject = ActionVaulted, path.Base(archive)
	out.Detail = map[string]string{"archive": archive, "node": tr.Kubelet.Node, "seconds": seconds(res.Proven.Sub(res.Requested))}
	if werr != nil {
		out.Outcome = audit.Error
		out.Detail["reason"] = clip(werr.Error())
	} else {
		res.Vaulted = *v
		out.Detail["id"], out.Detail["object"] = v.ID, v.Object
	}
	c, cancel = rctx()
	_, aerr = tr.Audit.Append(c, out)
	cancel()
	if werr != nil {
		return res, werr
	}
	if aerr != nil {
		return res, fmt.Errorf("vaulted as %s, but recording that in the audit trail failed: %w", v.ID, aerr)
	}
	return res, nil
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }
