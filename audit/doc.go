// Package audit is checkpoint-vault's tamper-evident audit trail: who did
// what to which checkpoint, when, and how it ended, kept in a hash-chained
// bbolt log at <stateDir>/audit.db (file 0600, directory 0700) whose head is
// signed with the node's signing key, queryable through indexes, and
// exported as sealed segments to the object store.
//
// # Writing: fail closed
//
// Append returns only once the record is committed and fsync'd; concurrent
// appends share one commit (group commit). It runs on a context detached
// from the caller's, so a cancelled request cannot lose its record. The
// rule for callers: an action happens only after its record is durable.
// Do makes that the easy path:
//
//	err := log.Do(ctx, audit.Record{Actor: "daemon", Action: "shredded", Subject: path, Outcome: audit.OK},
//		func(ctx context.Context) error { return shred.File(path) })
//
// records the intent, runs the action only if the intent is durable, and
// records the result (with the error text on failure). A denied request is
// one Append with Outcome Denied before the refusal is sent.
//
// Records never hold secrets or checkpoint content (see Record).
//
// # Tamper evidence
//
// Record n carries the SHA-256 of record n-1 and its own SHA-256 over a
// canonical binary encoding (DecodeRecord rejects any other encoding). Every
// Options.SignEvery records or Options.SignInterval, and at Close, the head
// (node, seq, hash, time) is signed through HeadSigner and stored.
//
// Verify recomputes the chain and checks every signed head with a
// HeadVerifier holding the auditor's trusted keys. It detects, and names
// the first affected sequence number of:
//
//   - a modified record (any field, any byte): its hash no longer matches,
//     or, if the attacker recomputed it, the next record's link breaks and a
//     signed head covering it no longer matches;
//   - a deleted record: a gap in the sequence numbers;
//   - an inserted or reordered record: a key that disagrees with the seq
//     inside the record, or a broken link;
//   - a dropped tail up to the last signed head: the head covers a seq
//     beyond the end of the log;
//   - a head forged or re-signed with any key not trusted by the verifier;
//   - index entries removed (records hidden from queries) or planted
//     (records shown under a value they do not have).
//
// It cannot detect, without exported segments:
//
//   - records dropped or rewritten after the last signed head, together
//     with any change the attacker makes to them (they are chained but not
//     yet signed); the exposure window is SignEvery records / SignInterval;
//   - the newest signed heads deleted together with the records they
//     cover: the log then looks like an older, shorter log;
//   - a whole database replaced by someone holding the signing key (or able
//     to use it, e.g. through the node's KMS permissions): the key is the
//     root of trust;
//   - actions that were never recorded because the code path did not call
//     Append: the trail is as complete as its callers.
//
// Export closes the first two gaps for everything exported: segments in the
// store (Object-Locked where configured) are checked by ReadStore against
// each other, so a local truncation or rewrite of an exported range shows
// as a mismatch with the store, and a deleted segment as a gap (except the
// newest segments of a node, unless Object Lock prevents their deletion).
//
// # Queries
//
// Record times never decrease (a clock stepped back repeats the newest
// time), so a time range is a seq range found through the time index; the
// other filters (action, namespace, pod, actor, subject, outcome) each
// have an index whose entries are in seq order, and Query intersects them
// by seeking, touching only matching records. Results are paged with an
// opaque cursor.
//
// # Living beside the daemon
//
// bbolt admits one process. The daemon holds the log; package auditsock
// serves Query and Verify over its unix socket. Without a daemon,
// OpenReadOnly opens the database for reading and fails after one second
// with ErrLocked if another process holds it.
package audit
