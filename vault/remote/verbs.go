package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// send makes one request with a JSON body (nil: none) and decodes the JSON
// answer into out.
func (s *Store) send(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	resp, err := s.doBody(ctx, method, path, nil, nil, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return DecodeJSON(resp.Body, out)
}

// ReportRestore records, in the service's trail, what became of a restore
// of the checkpoint base: POST /v1/restores/{base} (verb restore).
func (s *Store) ReportRestore(ctx context.Context, base string, rep RestoreReport) (*Recorded, error) {
	var r Recorded
	if err := s.send(ctx, http.MethodPost, APIVersion+"/restores/"+base, rep, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// SetHold places (on) or lifts the legal hold on every object of the
// checkpoint id (a base key or a unique short id): PUT or DELETE
// /v1/holds/{id} (verb pin).
func (s *Store) SetHold(ctx context.Context, id string, on bool) (*Recorded, error) {
	method := http.MethodPut
	if !on {
		method = http.MethodDelete
	}
	var r Recorded
	if err := s.send(ctx, method, APIVersion+"/holds/"+id, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GC asks the service to apply its retention policy (verb gc): the plan
// only (GET /v1/gc/plan) when dryRun, else a run (POST /v1/gc/runs).
func (s *Store) GC(ctx context.Context, dryRun bool) (*GCReport, error) {
	var rep GCReport
	var err error
	if dryRun {
		err = s.getJSON(ctx, APIVersion+"/gc/plan", nil, &rep)
	} else {
		err = s.send(ctx, http.MethodPost, APIVersion+"/gc/runs", nil, &rep)
	}
	if err != nil {
		return nil, err
	}
	if rep.Plan == nil {
		return nil, fmt.Errorf("%s answered a retention report without a plan", s.Describe())
	}
	return &rep, nil
}
