package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// Audit actions of a restore through the service: the ciphertext read for
// it (GET /v1/objects/{key}?purpose=restore), then the client's report of
// where the image went (POST /v1/restores/{id}). ActionRestored is the
// action a direct-mode restore records too (vault/responder), so
// `audit query --action restored` finds both.
const (
	ActionRestoreFetched = "restore-fetched"
	ActionRestored       = "restored"
)

// ParseObjectQuery reads the query of GET|HEAD /v1/objects/{key}: nothing,
// or purpose=restore. Untrusted input: anything else is refused.
func ParseObjectQuery(v url.Values) (purpose string, err error) {
	for k, vals := range v {
		if k != "purpose" {
			return "", badRequest("unknown parameter %q; objects take only purpose=restore", clipPath(k))
		}
		if len(vals) != 1 || vals[0] != remote.PurposeRestore {
			return "", badRequest("purpose must be given once, as purpose=%s", remote.PurposeRestore)
		}
		purpose = vals[0]
	}
	return purpose, nil
}

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// registryRE is HOST[:PORT] as go-containerregistry accepts it.
	registryRE = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)
	// repositoryRE is the distribution spec's repository name.
	repositoryRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
)

// ParseRestoreReport reads the body of POST /v1/restores/{id}. Untrusted
// input: one JSON object with only the known fields, each bounded and free
// of control characters; digests are sha256:HEX; an ok report names where
// the image went.
func ParseRestoreReport(b []byte) (remote.RestoreReport, error) {
	var r remote.RestoreReport
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, badRequest("the restore report is not the JSON object docs/API.md describes: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return r, badRequest("the restore report has data after its JSON object")
	}
	for k, v := range r.Detail() {
		if len(v) > remote.MaxReportField {
			return r, badRequest("%s is longer than %d bytes", k, remote.MaxReportField)
		}
		if strings.ContainsFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return r, badRequest("%s contains a control character", k)
		}
	}
	switch r.Outcome {
	case remote.RestoreOK, remote.RestoreError, remote.RestoreDenied:
	default:
		return r, badRequest("outcome %q: want %s, %s or %s", clipPath(r.Outcome), remote.RestoreOK, remote.RestoreError, remote.RestoreDenied)
	}
	for _, d := range []struct{ name, val string }{{"imageDigest", r.ImageDigest}, {"manifestDigest", r.ManifestDigest}, {"layerDigest", r.LayerDigest}} {
		if d.val != "" && !digestRE.MatchString(d.val) {
			return r, badRequest("%s %q is not sha256:<64 lowercase hex digits>", d.name, clipPath(d.val))
		}
	}
	if r.Registry != "" && !registryRE.MatchString(r.Registry) {
		return r, badRequest("registry %q is not HOST[:PORT]", r.Registry)
	}
	if r.Repository != "" && !repositoryRE.MatchString(r.Repository) {
		return r, badRequest("repository %q is not a repository name (lowercase path components)", r.Repository)
	}
	if r.Outcome == remote.RestoreOK {
		pushed := r.Registry != "" && r.Repository != "" && r.Image != ""
		if !pushed && r.OCILayout == "" || r.ImageDigest == "" {
			return r, badRequest("an ok restore names its imageDigest and where the image went: image, registry and repository, or ociLayout")
		}
		if pushed && !strings.HasSuffix(r.Image, "/"+r.Repository+"@"+r.ImageDigest) {
			return r, badRequest("image %q is not REGISTRY/%s@%s", r.Image, r.Repository, r.ImageDigest)
		}
	}
	return r, nil
}

// handleRestoreReport records what a client did with a checkpoint it read
// for a restore (verb restore): the push's image digest, registry and
// repository, or why it failed. The service cannot verify the claim — it
// never holds the plaintext — so the record says who reported it; the
// ciphertext read it follows is in the trail as ActionRestoreFetched.
func (s *Service) handleRestoreReport(q *request) error {
	body, err := io.ReadAll(q.r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(q.w, http.StatusRequestEntityTooLarge, remote.Error{Error: fmt.Sprintf("the restore report exceeds %d bytes", mbe.Limit)})
			return err
		}
		return q.fail(badRequest("reading the restore report: %v", err))
	}
	rep, err := ParseRestoreReport(body)
	if err != nil {
		return q.fail(err)
	}
	base, err := s.resolveID(q, "restore")
	if base == "" {
		return err
	}
	ns, _, _ := strings.Cut(base, "/")
	if !q.authorize("restore", ns, base) {
		return nil
	}
	if _, ok, err := s.index.Get(base); err != nil {
		writeError(q.w, http.StatusServiceUnavailable, remote.Error{Error: err.Error()})
		return err
	} else if !ok {
		writeError(q.w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("no checkpoint %s in the index: a restore is reported for a checkpoint the vault holds", base)})
		return nil
	}
	if !q.begin(ActionRestored, base, ns, rep.Detail()) {
		return nil
	}
	// The record's outcome is the restore's as reported; the status of
	// this request is in the outcome record's detail.
	switch rep.Outcome {
	case remote.RestoreError:
		q.rec.Outcome = audit.Error
	case remote.RestoreDenied:
		q.rec.Outcome = audit.Denied
	}
	var failure error
	defer func() { q.finish(failure) }()
	failure = writeJSONStatus(q.w, http.StatusCreated, remote.Recorded{Subject: base, Record: q.intent})
	return failure
}
