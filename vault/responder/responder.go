// Package responder gets vaulted checkpoints back for the people who must
// analyse them: it lists what the vault holds, verifies an object without
// decrypting it, fetches and decrypts one to a file that appears only once
// every check has passed, and inspects one in memory.
//
// It is the library behind `ckvault list`, `verify`, `fetch` and `inspect`,
// and what `ckvault dev --demo` calls in-process.
//
// # Trust
//
// Nothing read from the store is trusted before it is checked, in the order
// docs/FORMAT.md "Verification" prescribes: the manifest's signature under
// a trusted key (before its bytes are parsed), the manifest itself, that it
// names the key it was fetched under, the ciphertext's signatures, the
// ciphertext's SHA-256 and size while it streams, and, when decrypting, the
// end of the age stream and the plaintext's SHA-256 and size. A failure is a
// *CheckError naming the check; errors.Is(err, ErrVerification) tells it
// apart from a failure to run the checks at all (a network error, a missing
// object).
//
// age releases each decrypted chunk before the end of the file is
// authenticated, so Fetch writes plaintext only to a 0600 temporary file
// next to the output, and renames it into place only after the last check;
// on any failure the temporary file is overwritten and removed. Inspect
// never writes plaintext anywhere: the archive streams through the parser.
//
// # Audit
//
// Every operation that reads the vault is recorded before it starts and when
// it ends (who, what, which object, how it ended, and why), through an
// Auditor. Audit fails closed: if the intent cannot be recorded the operation
// does not start, and if a fetch's outcome cannot be recorded its output is
// destroyed instead of published.
package responder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Auditor records what responders do. *audit.Log implements it (the local
// trail, when no daemon runs here), and so does *auditsock.Client (through
// the daemon's local socket, which stamps the caller's uid as the actor).
//
// Append returns only once the record is durable; an error means the action
// it describes must not happen.
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// Responder reads one vault on behalf of one person.
type Responder struct {
	// Store is the vault: a store.Store, or the vault service's client
	// (package remote). Either way every object is verified here.
	Store store.Reader
	// Trusted are the signing keys whose signatures are accepted
	// (signing.publicKey and signing.publicKeys of the config).
	Trusted *signing.TrustedKeys
	// Audit receives a record of every operation. Required.
	Audit Auditor
	// Actor names the person in audit records, e.g. "uid:1000(alice)@laptop".
	Actor string
	// Logger receives progress notes; nil uses slog.Default().
	Logger *slog.Logger
	// Concurrency bounds parallel manifest downloads in List (default 8).
	Concurrency int
}

// Names of the checks, in the order they run. CheckError.Check holds one.
const (
	CheckManifestSignature   = "manifest signature"
	CheckManifest            = "manifest"
	CheckKeyBinding          = "key binding"
	CheckCiphertextSignature = "ciphertext signature"
	CheckCiphertext          = "ciphertext digest"
	CheckDecryption          = "decryption"
	CheckPlaintext           = "plaintext digest"
	CheckArchive             = "archive"
)

// ErrVerification is wrapped by every *CheckError: a check ran and found
// the object bad (as opposed to a check that could not run).
var ErrVerification = errors.New("verification failed")

// ErrNotFound: no vaulted checkpoint has the given id.
var ErrNotFound = errors.New("no such vaulted checkpoint")

// CheckError says which check refused an object, and why.
type CheckError struct {
	// Check is one of the Check* names.
	Check string
	// Object is the base key of the vaulted checkpoint.
	Object string
	Err    error
}

func (e *CheckError) Error() string {
	return fmt.Sprintf("%s: %s check failed: %v", e.Object, e.Check, e.Err)
}

func (e *CheckError) Unwrap() []error { return []error{ErrVerification, e.Err} }

// AmbiguousError: an id prefix matches more than one vaulted checkpoint.
type AmbiguousError struct {
	ID         string
	Candidates []string // "id  base key", sorted
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("id %q is ambiguous; it matches %d checkpoints, give more digits:\n  %s",
		e.ID, len(e.Candidates), strings.Join(e.Candidates, "\n  "))
}

// WrongIdentityError: none of the given identities can decrypt the
// checkpoint. It names, by fingerprint, who can.
type WrongIdentityError struct {
	Object string
	// SealedTo are the recipients' fingerprints from the verified manifest.
	SealedTo []string
	// Given are the fingerprints of the recipients of the identities given,
	// where they can be derived (SSH and plugin identities cannot always).
	Given []string
}

func (e *WrongIdentityError) Error() string {
	given := "(none whose recipient could be derived)"
	if len(e.Given) > 0 {
		given = strings.Join(e.Given, ", ")
	}
	msg := fmt.Sprintf("%s: none of the given identities can decrypt it; it was sealed to %s, the identities given are for %s",
		e.Object, strings.Join(e.SealedTo, ", "), given)
	if e.givenIsRecipient() {
		return msg + "; one of them is a recipient, so the age header may be damaged: run `ckvault verify`"
	}
	return msg + "; use the key of one of the recipients (-i FILE)"
}

func (e *WrongIdentityError) givenIsRecipient() bool {
	for _, g := range e.Given {
		for _, s := range e.SealedTo {
			if g == s {
				return true
			}
		}
	}
	return false
}

func (e *WrongIdentityError) Unwrap() error { return errIncorrectIdentity }

var errIncorrectIdentity = errors.New("incorrect identity")

// IsWrongIdentity reports whether err means the identities given cannot
// decrypt the checkpoint.
func IsWrongIdentity(err error) bool { return errors.Is(err, errIncorrectIdentity) }

func (r *Responder) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

// audited records an operation on subject: the intent before act runs (act
// does not run if that record fails), then the outcome. act returns the
// details to record (sizes, digests; never secrets or content). A
// *CheckError from act is recorded as a denial naming the check.
//
// commit, when act succeeds, runs after the outcome is durable and before
// audited returns; it is how Fetch publishes its output only once its record
// exists.
func (r *Responder) audited(ctx context.Context, action, subject string, m *manifest.Manifest,
	act func(ctx context.Context) (map[string]string, error), commit func() error) error {
	if r.Audit == nil {
		return fmt.Errorf("%s %s: no audit trail configured; refusing to read the vault unaudited", action, subject)
	}
	rec := audit.Record{Actor: r.Actor, Action: action, Subject: subject, Outcome: audit.OK}
	if m != nil {
		rec.Namespace, rec.Pod, rec.Container = m.Namespace, m.Pod, m.Container
	} else if kp, ok := ParseBaseKey(subject); ok {
		// Before the manifest is verified, the object key names where the
		// checkpoint claims to come from: enough for auditors to find
		// accesses by namespace and pod (the subject is the key itself).
		rec.Namespace, rec.Pod, rec.Container = kp.Namespace, kp.Pod, kp.Container
	}
	intent := rec
	intent.Detail = map[string]string{"phase": "intent"}
	seq, err := r.Audit.Append(ctx, intent)
	if err != nil {
		return fmt.Errorf("%s %s: recording the request in the audit trail: %w; nothing was read", action, subject, err)
	}
	detail, actErr := act(ctx)
	done := rec
	done.Detail = map[string]string{"phase": "done", "intent": fmt.Sprint(seq)}
	for k, v := range detail {
		done.Detail[k] = clip(v)
	}
	var ce *CheckError
	switch {
	case actErr == nil:
	case errors.As(actErr, &ce):
		done.Action = "denied"
		done.Outcome = audit.Denied
		done.Detail["request"] = action
		done.Detail["check"] = ce.Check
		done.Detail["reason"] = clip(ce.Err.Error())
	case errors.Is(actErr, context.Canceled):
		done.Outcome = audit.Error
		done.Detail["reason"] = "interrupted"
	default:
		done.Outcome = audit.Error
		done.Detail["reason"] = clip(actErr.Error())
	}
	// The outcome is recorded on a context of its own: an interrupted
	// request still leaves its record.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := r.Audit.Append(rctx, done); err != nil {
		if actErr != nil {
			return fmt.Errorf("%w (and recording the outcome in the audit trail failed: %v)", actErr, err)
		}
		return fmt.Errorf("%s %s: recording the outcome in the audit trail: %w; the result is withheld", action, subject, err)
	}
	if actErr == nil && commit != nil {
		if err := commit(); err != nil {
			fail := done
			fail.Outcome = audit.Error
			fail.Detail = map[string]string{"phase": "publish", "intent": fmt.Sprint(seq), "reason": clip(err.Error())}
			if _, aerr := r.Audit.Append(rctx, fail); aerr != nil {
				r.logger().Error("recording a failed publish in the audit trail", "subject", subject, "err", aerr)
			}
			return err
		}
	}
	return actErr
}

func clip(s string) string {
	if len(s) > audit.MaxFieldLen {
		return s[:audit.MaxFieldLen-3] + "..."
	}
	return s
}
