package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// wrap turns a minio-go or transport error into one that names the store,
// the operation and the key, wraps the store sentinel that fits, and says
// how to fix permanent problems.
func (s *Store) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("store %s: %s %q", s.Describe(), op, key)
	if key == "" {
		where = fmt.Sprintf("store %s: %s", s.Describe(), op)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", where, err)
	}

	// TLS problems are configuration, not weather.
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	switch {
	case errors.As(err, &unknownCA):
		return fmt.Errorf("%s: TLS: the server's certificate is signed by an unknown authority (%v); set store.caFile to the CA that issued it: %w", where, unknownCA, store.ErrPermanent)
	case errors.As(err, &hostErr):
		return fmt.Errorf("%s: TLS: the server's certificate does not name this host (%v); fix the store URL's host or the certificate: %w", where, hostErr, store.ErrPermanent)
	case errors.As(err, &invalid):
		return fmt.Errorf("%s: TLS: the server's certificate is invalid (%v): %w", where, invalid, store.ErrPermanent)
	case errors.As(err, &verr):
		return fmt.Errorf("%s: TLS: the server's certificate failed verification (%v): %w", where, verr.Err, store.ErrPermanent)
	case errors.As(err, &recErr):
		return fmt.Errorf("%s: TLS: the server does not speak TLS on this port (does the URL point at an http:// endpoint?): %w", where, store.ErrPermanent)
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("%s: TLS: the server does not speak TLS on this port (does the URL point at an http:// endpoint?): %w", where, store.ErrPermanent)
	}
	if msg := err.Error(); strings.Contains(msg, "remote error: tls:") {
		return fmt.Errorf("%s: TLS handshake refused by the server (%v); if it requires a client certificate, set store.clientCert and store.clientKey: %w", where, redact(err), store.ErrPermanent)
	}

	resp := s3err(err)
	switch resp.Code {
	case "NoSuchKey", "NoSuchVersion", "NoSuchObject":
		return fmt.Errorf("%s: %w", where, store.ErrNotExist)
	case "PreconditionFailed":
		// Only create-only Puts send a precondition (If-None-Match: *).
		return fmt.Errorf("%s: %w", where, store.ErrExists)
	case "NoSuchBucket":
		return fmt.Errorf("%s: bucket %q does not exist (create it, or fix the store URL): %w", where, s.bucket, store.ErrPermanent)
	case "InvalidAccessKeyId", "XAdminUserNotFound":
		return fmt.Errorf("%s: the server does not know this access key (check accessKeyFile or AWS_ACCESS_KEY_ID): %w", where, store.ErrPermanent)
	case "SignatureDoesNotMatch":
		return fmt.Errorf("%s: request signature rejected: the secret key is wrong (check secretKeyFile or AWS_SECRET_ACCESS_KEY) or the region is (store.region): %w", where, store.ErrPermanent)
	case "ExpiredToken", "InvalidToken", "TokenRefreshRequired":
		return fmt.Errorf("%s: session token rejected (%s); check the IAM role / web identity: %w", where, resp.Code, store.ErrPermanent)
	case "AuthorizationHeaderMalformed", "InvalidRegion":
		return fmt.Errorf("%s: wrong region (%s); set store.region: %w", where, resp.Message, store.ErrPermanent)
	case "InvalidBucketName":
		return fmt.Errorf("%s: invalid bucket name %q: %w", where, s.bucket, store.ErrPermanent)
	case "ObjectLocked":
		return fmt.Errorf("%s: %s: %w", where, resp.Message, store.ErrLocked)
	case "AccessDenied", "InvalidRequest":
		// Servers disagree on the code for a WORM-protected version: AWS
		// and versitygw say AccessDenied, MinIO InvalidRequest ("Object
		// is WORM protected"). The message tells.
		if m := strings.ToLower(resp.Message); strings.Contains(m, "worm") || strings.Contains(m, "object lock") || strings.Contains(m, "retention") || strings.Contains(m, "legal hold") || strings.Contains(m, "locked") {
			return fmt.Errorf("%s: %s: %w", where, resp.Message, store.ErrLocked)
		}
		if resp.Code == "InvalidRequest" {
			break
		}
		return fmt.Errorf("%s: access denied (grant this identity s3:%s on bucket %q and prefix): %w", where, s3Action(op), s.bucket, store.ErrPermanent)
	case "BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch", "InvalidChecksum", "IncompleteBody":
		return fmt.Errorf("%s: the server rejected the bytes it received as not matching their checksum (%s): corrupted in transit: %w", where, resp.Code, store.ErrIncomplete)
	case "MethodNotAllowed":
		if resp.StatusCode == 405 && (op == "stat" || op == "open") {
			return fmt.Errorf("%s: %w", where, store.ErrNotExist) // a delete marker
		}
	}
	if resp.StatusCode == 404 && resp.Code == "" {
		return fmt.Errorf("%s: %w", where, store.ErrNotExist)
	}
	if resp.Code != "" {
		return fmt.Errorf("%s: %s (HTTP %d): %w", where, resp.Code, resp.StatusCode, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// s3err extracts the S3 error response from err's chain (zero if none).
func s3err(err error) minio.ErrorResponse {
	var r minio.ErrorResponse
	errors.As(err, &r)
	return r
}

func s3Action(op string) string {
	switch op {
	case "put", "verify upload of":
		return "PutObject"
	case "delete":
		return "DeleteObject"
	case "list":
		return "ListBucket"
	default:
		return "GetObject"
	}
}

// redact removes anything that looks like a credential from an error
// message. minio-go does not put secrets in errors, but URLs of presigned
// requests would carry signatures.
func redact(err error) string {
	msg := err.Error()
	for _, marker := range []string{"X-Amz-Signature=", "X-Amz-Credential=", "X-Amz-Security-Token="} {
		for {
			i := strings.Index(msg, marker)
			if i < 0 {
				break
			}
			j := i + len(marker)
			k := j
			for k < len(msg) && msg[k] != '&' && msg[k] != ' ' && msg[k] != '"' {
				k++
			}
			msg = msg[:j] + "REDACTED" + msg[k:]
			if k == j {
				break
			}
		}
	}
	return msg
}

// transient reports whether err (raw from minio-go, or already wrapped)
// may go away on retry.
func (s *Store) transient(err error) bool {
	if err == nil {
		return false
	}
	err = s.wrap("", "", err)
	for _, perm := range []error{store.ErrPermanent, store.ErrNotExist, store.ErrLocked, store.ErrIncomplete, store.ErrUnsupported, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, perm) {
			return false
		}
	}
	resp := s3err(err)
	switch resp.Code {
	case "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "XMinioServerNotInitialized", "RequestTimeTooSkewed", "OperationAborted":
		return true
	}
	if resp.StatusCode >= 500 || resp.StatusCode == 429 {
		return true
	}
	if resp.StatusCode >= 400 {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// Connection resets, EOFs mid-response and the like: anything without
	// an S3 error code that was not classified permanent above.
	return true
}

func (s *Store) backoff(attempt int) time.Duration {
	d := s.baseDelay << (attempt - 1)
	if d > maxDelay || d <= 0 {
		d = maxDelay
	}
	// Full jitter on the upper half, so many nodes do not retry in step.
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retry runs op up to s.attempts times while it fails transiently. It
// classifies errors with wrap first, so permanent ones stop at once.
func (s *Store) retry(ctx context.Context, op func() error) error {
	var err error
	for attempt := 0; attempt < s.attempts; attempt++ {
		if attempt > 0 {
			if serr := sleep(ctx, s.backoff(attempt)); serr != nil {
				return err
			}
		}
		err = op()
		if err == nil || !s.transient(err) {
			return err
		}
	}
	return err
}
