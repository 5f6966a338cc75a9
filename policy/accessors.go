package policy

import "time"

// NamespacePolicy resolves the encryption policy for a namespace.
//
// A namespace listed under namespaces: with its own recipients or
// recipientsFile uses those INSTEAD of the global ones (not in addition):
// per-namespace recipients exist to narrow who can read a namespace's
// memory, so they never inherit the global list. A listed namespace
// without recipients of its own (or an unlisted one) uses the global
// recipients and recipientsFile. skip reports that the namespace's archives
// are to be left alone entirely.
func (c *Config) NamespacePolicy(ns string) (recipients []string, recipientsFile string, skip bool) {
	if p, ok := c.Namespaces[ns]; ok {
		if p.Skip {
			return nil, "", true
		}
		if len(p.Recipients) > 0 || p.RecipientsFile != "" {
			return p.Recipients, p.RecipientsFile, false
		}
	}
	return c.Recipients, c.RecipientsFile, false
}

// SigningKeyIsKMS reports whether signing.key is a KMS URI rather than a
// key file.
func (c *Config) SigningKeyIsKMS() bool { return isKMSURI(c.Signing.Key) }

// RescanEvery is daemon.rescanInterval parsed (validated by Load).
func (d DaemonConfig) RescanEvery() time.Duration { return mustDuration(d.RescanInterval) }

// OwnerRule is daemon.owner parsed: any reports that any owner is
// accepted; otherwise admitted archives must be owned by uid.
func (d DaemonConfig) OwnerRule() (uid uint32, any bool) {
	uid, any, _ = parseOwner(d.Owner)
	return uid, any
}

// SignEveryInterval is audit.signInterval parsed (validated by Load).
func (a AuditConfig) SignEveryInterval() time.Duration { return mustDuration(a.SignInterval) }

// ExportEvery is audit.exportInterval parsed (validated by Load).
func (a AuditConfig) ExportEvery() time.Duration { return mustDuration(a.ExportInterval) }

// mustDuration parses a duration that Load validated; a Config built by
// hand with a bad value gets 0, which callers treat as "use the default".
func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d
}
