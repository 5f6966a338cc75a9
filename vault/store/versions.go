package store

import "time"

// Version is one version of one key, as a version listing reports it: a
// stored object or a delete marker. Retention and legal hold are not part
// of a listing (S3 does not return them there); StatVersion reports them.
//
// The version operations (ListVersions, StatVersion, DeleteVersion) are
// not part of Store: only retention (vault/gc) needs them, and it declares
// the interface it consumes. s3store and filestore implement them, and
// storetest.RunVersions checks both against the same contract.
type Version struct {
	Key string
	// VersionID identifies the version. A store that keeps no versions
	// (the file store) reports "" for the one version it holds.
	VersionID string
	// IsLatest marks the current version of the key (a delete marker can
	// be the latest: the key then looks deleted, yet its older versions
	// still hold the bytes).
	IsLatest bool
	// DeleteMarker marks a delete marker, which holds no data and carries
	// no lock.
	DeleteMarker bool
	Size         int64
	LastModified time.Time
}

// Lock is the Object Lock state of one version.
type Lock struct {
	// Mode is "compliance", "governance" or "" (no retention).
	Mode string
	// Until is the retain-until date; retention has ended once it is past.
	Until time.Time
	// LegalHold is on until someone lifts it; it has no expiry.
	LegalHold bool
}

// Retained reports whether the retention (not the legal hold) still
// forbids deleting the version at now.
func (l Lock) Retained(now time.Time) bool { return l.Mode != "" && now.Before(l.Until) }

// DeleteOptions tune DeleteVersion.
type DeleteOptions struct {
	// BypassGovernance deletes a version under governance retention (the
	// S3 x-amz-bypass-governance-retention header; the principal needs
	// s3:BypassGovernanceRetention). Compliance retention and legal holds
	// are never bypassed, whatever this says.
	BypassGovernance bool
}
