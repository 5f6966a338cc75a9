// Package remote is the client of the vault service (`ckvault serve`) and
// the JSON types of its API (docs/API.md).
//
// Store implements store.Reader over the service, so the responder and
// audit code that verifies objects read straight from a store runs
// unchanged on a laptop that holds no store credentials: the service is
// trusted for nothing but availability. A malicious service can refuse, but
// a forged, swapped, truncated or replayed object fails the same checks it
// would fail if it came from a tampered store.
package remote

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/checkpoint-vault/ckvault/vault/gc"
)

// APIVersion is the path prefix of every versioned endpoint.
const APIVersion = "/v1"

// Object is one stored object as the service reports it.
type Object struct {
	Key          string    `json:"key"`
	Size         int64     `json:"size"`
	LastModified time.Time `json:"lastModified,omitzero"`
}

// Checkpoint is one index entry: a vaulted checkpoint's base key, the
// objects present under it, and, when the store holds them, its manifest
// and signatures (raw bytes, base64 in JSON) so a client verifies a whole
// listing without one more request per entry. The descriptive fields come
// from the manifest the service verified, or from the key when it could not
// verify one (Problem says why); clients verify for themselves either way.
type Checkpoint struct {
	ID           string    `json:"id"`
	Base         string    `json:"base"`
	Namespace    string    `json:"namespace"`
	Pod          string    `json:"pod"`
	Container    string    `json:"container"`
	Node         string    `json:"node"`
	Checkpointed time.Time `json:"checkpointed,omitzero"`
	// Size and SHA256 are the ciphertext's, from the verified manifest.
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// Verified reports that the service verified the manifest (signature
	// under its trusted keys, form, key binding).
	Verified bool   `json:"verified"`
	Problem  string `json:"problem,omitempty"`

	Objects []Object `json:"objects"`
	// Manifest holds the .manifest.json bytes; Signatures maps a suffix
	// (.manifest.sig, .manifest.sigstore.json, .sig, .sigstore.json) to
	// that object's bytes.
	Manifest   []byte            `json:"manifest,omitempty"`
	Signatures map[string][]byte `json:"signatures,omitempty"`
}

// CheckpointList is one page of GET /v1/checkpoints.
type CheckpointList struct {
	Items []Checkpoint `json:"items"`
	// Next is the cursor of the following page; empty on the last.
	Next string `json:"next,omitempty"`
}

// ObjectList is one page of GET /v1/audit/segments.
type ObjectList struct {
	Items []Object `json:"items"`
	Next  string   `json:"next,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	// Error says what went wrong and what to do about it.
	Error string `json:"error"`
	// Verb and Namespace name what was refused (403 only).
	Verb      string `json:"verb,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// PurposeRestore, as the query parameter purpose=restore of
// GET|HEAD /v1/objects/{key}, marks a read of a checkpoint's ciphertext as
// part of a restore: the service authorises it with the verb restore
// instead of fetch and records it as ActionRestoreFetched.
const PurposeRestore = "restore"

// Restore outcomes a client reports (RestoreReport.Outcome).
const (
	RestoreOK     = "ok"
	RestoreError  = "error"
	RestoreDenied = "denied"
)

// RestoreReport is the body of POST /v1/restores/{id}: what the client did
// with a checkpoint it read for a restore — where the image went and its
// digests, or why it failed. The service cannot check it (it never sees
// the plaintext); it records who reported what.
type RestoreReport struct {
	// Outcome is ok, error (the restore failed) or denied (a check refused
	// the checkpoint; Check names it).
	Outcome string `json:"outcome"`
	// Image is the pushed image pinned by digest,
	// REGISTRY/REPOSITORY@sha256:…; Registry and Repository are its parts.
	Image      string `json:"image,omitempty"`
	Registry   string `json:"registry,omitempty"`
	Repository string `json:"repository,omitempty"`
	Tag        string `json:"tag,omitempty"`
	// OCILayout is the directory the image was written to instead.
	OCILayout      string `json:"ociLayout,omitempty"`
	ImageDigest    string `json:"imageDigest,omitempty"`
	ManifestDigest string `json:"manifestDigest,omitempty"`
	LayerDigest    string `json:"layerDigest,omitempty"`
	Platform       string `json:"platform,omitempty"`
	Check          string `json:"check,omitempty"`
	Reason         string `json:"reason,omitempty"`
}

// restoreFields maps RestoreReport's fields to the audit detail keys a
// direct-mode restore records (vault/restore Result.AuditDetail), so that
// an auditor reads the same keys either way.
func (r *RestoreReport) fields() []struct {
	key string
	val *string
} {
	return []struct {
		key string
		val *string
	}{
		{"image", &r.Image}, {"registry", &r.Registry}, {"repository", &r.Repository}, {"tag", &r.Tag},
		{"ociLayout", &r.OCILayout}, {"imageDigest", &r.ImageDigest}, {"manifestDigest", &r.ManifestDigest},
		{"layerDigest", &r.LayerDigest}, {"platform", &r.Platform}, {"check", &r.Check}, {"reason", &r.Reason},
	}
}

// Detail is the report as audit detail (empty fields left out).
func (r RestoreReport) Detail() map[string]string {
	d := map[string]string{"reported": r.Outcome}
	for _, f := range r.fields() {
		if *f.val != "" {
			d[f.key] = *f.val
		}
	}
	return d
}

// MaxReportField bounds each string of a RestoreReport; the service
// refuses longer ones (and control characters) rather than record them cut.
const MaxReportField = 512

// RestoreReportOf builds a report from the detail of a restore's audit
// record (the inverse of Detail; other keys are ignored). Free text (an
// error's reason) is made to fit: control characters become spaces and
// what exceeds MaxReportField is cut at a character boundary.
func RestoreReportOf(outcome string, detail map[string]string) RestoreReport {
	r := RestoreReport{Outcome: outcome}
	for _, f := range r.fields() {
		v := strings.ToValidUTF8(detail[f.key], "?")
		v = strings.Map(func(c rune) rune {
			if c < 0x20 || c == 0x7f {
				return ' '
			}
			return c
		}, v)
		if len(v) > MaxReportField {
			cut := MaxReportField - 3
			for cut > 0 && !utf8.RuneStart(v[cut]) {
				cut--
			}
			v = v[:cut] + "..."
		}
		*f.val = v
	}
	return r
}

// Recorded answers the endpoints that change or record something (restore
// reports, holds): the checkpoint concerned and the sequence number of the
// intent record in the service's trail.
type Recorded struct {
	Subject string `json:"subject"`
	Record  uint64 `json:"record"`
	// Objects counts the objects a hold was set on or lifted from.
	Objects int `json:"objects,omitempty"`
}

// GCReport answers GET /v1/gc/plan (DryRun) and POST /v1/gc/runs; it is
// also what `ckvault gc -o json` prints.
type GCReport struct {
	DryRun bool     `json:"dryRun"`
	Plan   *gc.Plan `json:"plan"`
	// Deleted and Failed are set for a real run.
	Deleted []gc.Action `json:"deleted,omitempty"`
	Failed  []GCFailure `json:"failed,omitempty"`
	// Error is a failure of the run as a whole after its plan was made
	// (e.g. its audit record could not be written: nothing was deleted).
	Error string `json:"error,omitempty"`
}

// GCFailure is one deletion that did not complete (an intent is left, and
// the next run finishes it).
type GCFailure struct {
	Base  string `json:"base"`
	Error string `json:"error"`
}

// NewGCReport builds the report of a run (res nil for a dry run).
func NewGCReport(dryRun bool, plan *gc.Plan, res *gc.Result, runErr error) GCReport {
	rep := GCReport{DryRun: dryRun, Plan: plan}
	if res != nil {
		rep.Deleted = res.Deleted
		for _, f := range res.Failed {
			rep.Failed = append(rep.Failed, GCFailure{Base: f.Action.Base, Error: f.Err.Error()})
		}
	}
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	return rep
}
