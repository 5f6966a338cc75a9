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

import "time"

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

// Suffixes whose objects are small enough to be listed inline.
const MaxInline = 64 << 10
