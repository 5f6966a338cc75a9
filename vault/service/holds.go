package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// handleHold places (PUT) or lifts (DELETE) the legal hold on every object
// of a checkpoint — what `ckvault pin`/`unpin` do against the store, with
// the same code (gc.Pin), authorised by the verb pin. gc.Pin records the
// intent before any hold changes and the outcome after; the service adds
// the caller's source and authentication to both records, and answers 503
// (changing nothing) when the intent cannot be recorded.
func (s *Service) handleHold(q *request) error {
	on := q.r.Method == http.MethodPut
	base, err := s.resolveID(q, "pin")
	if base == "" {
		return err
	}
	kp, ok := parseKeyParts(base)
	if !ok || store.ValidKey(base) != nil || audit.CheckIdentity(kp[0], kp[1], kp[2]) != nil {
		// No checkpoint has such a key: the caller's error, before the
		// hold's audit record refuses the names (a 503, as if the
		// trail were failing) or the store the key (a 502).
		return q.fail(badRequest("%q is not a checkpoint's base key NAMESPACE/POD/CONTAINER/NAME", base))
	}
	ns, _, _ := strings.Cut(base, "/")
	if !q.authorize("pin", ns, base) {
		return nil
	}
	if s.holds == nil {
		writeError(q.w, http.StatusNotImplemented, remote.Error{Error: "this service was started without a store that can set legal holds; pin with `ckvault pin --config F` against the store"})
		return nil
	}
	au := &holdAuditor{au: s.audit, extra: q.baseRecord("", base, ns).Detail}
	err = gc.Pin(q.r.Context(), s.holds, au, q.id.Actor(), base, on)
	switch {
	case au.intentErr != nil:
		q.auditUnavailable(au.intentErr)
		return err
	case errors.Is(err, store.ErrNotExist):
		writeError(q.w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("no object of checkpoint %s is in the store; run `ckvault list`", base)})
	case errors.Is(err, store.ErrUnsupported):
		writeError(q.w, http.StatusNotImplemented, remote.Error{Error: err.Error()})
	case err != nil:
		writeError(q.w, http.StatusBadGateway, remote.Error{Error: err.Error()})
	default:
		n, _ := strconv.Atoi(au.objects)
		return writeJSON(q.w, remote.Recorded{Subject: base, Record: au.intent, Objects: n})
	}
	return err
}

// holdAuditor passes gc.Pin's records to the service's trail with the
// request's source and authentication added, and remembers what the
// handler must answer: whether the intent was refused, its sequence number
// and how many objects the outcome counted.
type holdAuditor struct {
	au        Auditor
	extra     map[string]string
	intentErr error
	intent    uint64
	objects   string
}

func (h *holdAuditor) Append(ctx context.Context, rec audit.Record) (uint64, error) {
	d := cloneDetail(rec.Detail)
	for k, v := range h.extra {
		if _, ok := d[k]; !ok {
			d[k] = v
		}
	}
	rec.Detail = d
	seq, err := h.au.Append(ctx, rec)
	switch {
	case rec.Detail["phase"] == "intent" && err != nil:
		h.intentErr = err
	case rec.Detail["phase"] == "intent":
		h.intent = seq
	default:
		h.objects = rec.Detail["objects"]
	}
	return seq, err
}
