package service

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/policy"
)

// Identity is an authenticated caller, normalised from a client
// certificate or a bearer token.
type Identity struct {
	// User is the SPIFFE id or subject CN of a certificate, or the user
	// name TokenReview returned (system:serviceaccount:NS:NAME for a
	// service account).
	User string
	// Groups are a certificate's organisations, or TokenReview's groups.
	Groups []string
	// UID is TokenReview's uid (empty for certificates).
	UID string
	// Kind is "cert" or "token".
	Kind string
}

// Actor is how the identity appears in audit records.
func (id Identity) Actor() string { return id.Kind + ":" + id.User }

// TokenReviewer checks a bearer token for the configured audience
// (Kubernetes TokenReview). ok=false with a nil error is a rejected token;
// an error means the review could not be made.
type TokenReviewer interface {
	Review(ctx context.Context, token string) (id Identity, ok bool, reason string, err error)
}

// errUnauthenticated is a request without acceptable credentials.
var errUnauthenticated = errors.New("unauthenticated")

// authenticate returns the caller of r: a client certificate that chains to
// serve.clientCA first, else a bearer token checked with TokenReview.
// Anything else is refused.
//
// The TLS layer only asks for a certificate (tls.RequestClientCert, with
// proof of its key); the chain is checked here, so that a certificate from
// another CA is a 401 with an audit record like any other refusal rather
// than a handshake failure that only the server's log sees.
func (s *Service) authenticate(r *http.Request) (Identity, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return certIdentity(r.TLS.VerifiedChains[0][0]) // verified by a TLS layer that verifies
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		leaf, err := s.verifyClientCert(r.TLS.PeerCertificates)
		if err != nil {
			return Identity{}, err
		}
		return certIdentity(leaf)
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || strings.TrimSpace(tok) == "" {
		return Identity{}, fmt.Errorf("%w: present a client certificate issued by the service's client CA, or a bearer token (Authorization: Bearer) issued for the service's audience", errUnauthenticated)
	}
	if s.tokens == nil {
		return Identity{}, fmt.Errorf("%w: this service accepts no bearer tokens (serve.kubernetes is not configured); use a client certificate", errUnauthenticated)
	}
	tok = strings.TrimSpace(tok)
	if c, cached := s.tokens.(*tokenCache); !cached || !c.seen(tok) {
		// A token not seen lately costs a TokenReview at the API server.
		// Whoever sends it is not authenticated yet, so it is rate
		// limited per source address, as every unauthenticated request
		// is: made-up tokens cannot turn into a flood of reviews (and
		// get the service's own reviews throttled there).
		if wait, ok := s.allow(unauthenticatedSource(r)); !ok {
			return Identity{}, &reviewLimitedError{wait}
		}
	}
	id, ok, reason, err := s.tokens.Review(r.Context(), tok)
	if err != nil {
		// The error goes into the trail and the log: it must not carry
		// the token, whatever a reviewer or the API server put in it.
		return Identity{}, &reviewUnavailableError{strings.ReplaceAll(err.Error(), tok, "[token]")}
	}
	if !ok {
		return Identity{}, fmt.Errorf("%w: the bearer token was rejected (%s); get a token for the service's audience (kubectl create token SA --audience %s)", errUnauthenticated, reason, s.audience)
	}
	return id, nil
}

// verifyClientCert checks the chain a client presented against
// serve.clientCA, for client authentication, now.
func (s *Service) verifyClientCert(chain []*x509.Certificate) (*x509.Certificate, error) {
	if s.clientCAs == nil {
		return nil, fmt.Errorf("%w: this service accepts no client certificates (serve.clientCA is not set); use a bearer token", errUnauthenticated)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	now := time.Now()
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: s.clientCAs, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%w: %s", errUnauthenticated, certProblem(chain[0], err, now))
	}
	return chain[0], nil
}

// certProblem says why leaf did not verify, and what to do about it, in
// words a holder can act on; x509's own text ("has expired or is not yet
// valid: current time … is after …") names neither which it is nor the fix.
// x509 checks the leaf's validity period first, so an expired certificate
// from another CA is reported as expired.
func certProblem(leaf *x509.Certificate, err error, now time.Time) string {
	which := fmt.Sprintf("the client certificate (subject %q, serial %s)", leaf.Subject.CommonName, leaf.SerialNumber.Text(16))
	var ci x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &ci) && ci.Reason == x509.Expired && ci.Cert != nil:
		if ci.Cert != leaf {
			// An intermediate the client sent, or the CA itself.
			which = fmt.Sprintf("the certificate %q in the client certificate's chain", ci.Cert.Subject.CommonName)
		}
		if now.Before(ci.Cert.NotBefore) {
			return fmt.Sprintf("%s is not valid until %s (the service's clock says %s); use it from then on, or check the clock of whoever issued it",
				which, ci.Cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		if ci.Cert != leaf {
			return fmt.Sprintf("%s expired at %s; renew it (the service's client CA, serve.clientCA, or the intermediate the client sends), then issue a new certificate",
				which, ci.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		return fmt.Sprintf("%s expired at %s; issue a new certificate from the service's client CA (serve.clientCA)", which, ci.Cert.NotAfter.UTC().Format(time.RFC3339))
	case errors.As(err, &ci) && ci.Reason == x509.IncompatibleUsage:
		if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
			return fmt.Sprintf("%s is for client authentication, but an issuer in its chain does not allow that usage; issue it from a CA whose chain allows clientAuth", which)
		}
		return fmt.Sprintf("%s is not for client authentication (its extended key usages: %s); issue a certificate with extended key usage clientAuth (TLS Web Client Authentication) from the service's client CA",
			which, extKeyUsageNames(leaf))
	case errors.As(err, &ua):
		return fmt.Sprintf("%s was issued by %q, not by the service's client CA (serve.clientCA); use a certificate that CA issued", which, leaf.Issuer.CommonName)
	}
	return fmt.Sprintf("%s does not verify against the service's client CA (serve.clientCA): %v", which, err)
}

// extKeyUsageNames lists a certificate's extended key usages by their
// OpenSSL short names.
func extKeyUsageNames(c *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{
		x509.ExtKeyUsageAny: "any", x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageClientAuth: "clientAuth",
		x509.ExtKeyUsageCodeSigning: "codeSigning", x509.ExtKeyUsageEmailProtection: "emailProtection",
		x509.ExtKeyUsageTimeStamping: "timeStamping", x509.ExtKeyUsageOCSPSigning: "OCSPSigning",
	}
	var out []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := names[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("usage %d", u))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// reviewUnavailableError: a bearer token could not be reviewed (the API
// server unreachable, or answering an error); the request is refused with
// a recorded 503. reason never holds the token.
type reviewUnavailableError struct{ reason string }

func (e *reviewUnavailableError) Error() string { return "TokenReview unavailable: " + e.reason }

// reviewLimitedError: a bearer token would need a TokenReview, and its
// source address has sent too many unauthenticated requests (429).
type reviewLimitedError struct{ wait time.Duration }

func (e *reviewLimitedError) Error() string {
	return fmt.Sprintf("too many unauthenticated requests from this address; retry after %s", e.wait.Round(time.Second))
}

// certIdentity: the SPIFFE URI SAN when there is one, else the subject CN.
func certIdentity(c *x509.Certificate) (Identity, error) {
	id := Identity{Kind: "cert", Groups: append([]string(nil), c.Subject.Organization...)}
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			id.User = u.String()
			return id, nil
		}
	}
	id.User = c.Subject.CommonName
	if id.User == "" {
		return Identity{}, fmt.Errorf("%w: the client certificate has neither a SPIFFE URI SAN nor a subject CN to name its holder", errUnauthenticated)
	}
	return id, nil
}

// How long TokenReview answers are cached (tokenCache).
//
// Accepted: 2 minutes, the default of kube-rbac-proxy's delegating
// authenticator and of kube-apiserver's own webhook token authenticator
// (--authentication-token-webhook-cache-ttl). It is also the window in
// which the service still accepts a token whose service account was
// deleted (or which expired) after its last review, and in which a
// reviewed caller keeps working while the API server is down.
//
// Rejected: 10 seconds, shorter than kube-rbac-proxy's 2 minutes (it uses
// one TTL for both answers) and equal to the default of k8s.io/apiserver's
// delegating authenticator. The long negative cache there protects the API
// server from a repeated bad token; here every token not in the cache is
// held to the per-address limit before its review (authenticate), which
// does that already. Re-asking sooner costs nothing in safety — a rejected
// token is accepted only if the API server now accepts it — and a caller
// whose token was rejected for a cause fixed on the API server's side (its
// audiences or issuer, say) gets a fresh answer within seconds, not
// minutes.
const (
	tokenAllowTTL = 2 * time.Minute
	tokenDenyTTL  = 10 * time.Second
)

// How long SubjectAccessReview decisions are cached (cachingAuthorizer):
// kube-rbac-proxy's defaults. A revoked RoleBinding stays effective in the
// service up to decisionAllowTTL.
const (
	decisionAllowTTL = 5 * time.Minute
	decisionDenyTTL  = 30 * time.Second
)

// tokenCache remembers TokenReview answers by the token's SHA-256 (never
// the token), so a client's stream of requests costs one review: accepted
// tokens for allowTTL, rejected ones for denyTTL (tokenAllowTTL and
// tokenDenyTTL in the service). Errors are not cached: the next request
// asks again.
type tokenCache struct {
	next              TokenReviewer
	allowTTL, denyTTL time.Duration
	answers           *answerCache[[32]byte, tokenAnswer]
}

type tokenAnswer struct {
	id     Identity
	ok     bool
	reason string
}

const maxCacheEntries = 100_000

func newTokenCache(next TokenReviewer, allowTTL, denyTTL time.Duration) *tokenCache {
	return &tokenCache{next: next, allowTTL: allowTTL, denyTTL: denyTTL, answers: newAnswerCache[[32]byte, tokenAnswer]()}
}

// seen reports whether token has an answer in the cache that has not
// expired: accepting or rejecting it costs no review.
func (c *tokenCache) seen(token string) bool {
	_, hit := c.answers.get(sha256.Sum256([]byte(token)), time.Now())
	return hit
}

func (c *tokenCache) Review(ctx context.Context, token string) (Identity, bool, string, error) {
	k := sha256.Sum256([]byte(token))
	now := time.Now()
	if a, hit := c.answers.get(k, now); hit {
		return a.id, a.ok, a.reason, nil
	}
	id, ok, reason, err := c.next.Review(ctx, token)
	if err != nil {
		return id, ok, reason, err
	}
	ttl := c.denyTTL
	if ok {
		ttl = c.allowTTL
		if exp, has := tokenExpiry(token); has {
			// Never remember an acceptance past the token's own expiry.
			ttl = min(ttl, exp.Sub(now))
		}
	}
	c.answers.put(k, tokenAnswer{id, ok, reason}, ok, now, now.Add(ttl))
	return id, ok, reason, nil
}

// maxTokenBytes bounds the tokens tokenExpiry reads (service-account
// tokens are about 1 KiB).
const maxTokenBytes = 16 << 10

// tokenExpiry reads the exp claim of a JWT in compact form, unverified: the
// API server has just accepted the token, and the time only shortens how
// long that answer is remembered. A token that is not a JWT with a numeric
// exp has none.
func tokenExpiry(token string) (time.Time, bool) {
	if len(token) > maxTokenBytes {
		return time.Time{}, false
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	sec, err := claims.Exp.Float64()
	if err != nil || math.IsNaN(sec) || sec < 0 || sec > 1<<40 {
		return time.Time{}, false
	}
	return time.Unix(int64(sec), 0), true
}

// Decision is an authoriser's answer.
type Decision struct {
	Allowed bool
	// Reason names the grant that allowed it, or why not.
	Reason string
}

// Authorizer decides whether id may do verb (one of policy.ServeVerbs) in
// namespace ("" for the cluster-wide audit trail). An error means no
// decision could be made; the request is then refused (deny by default).
type Authorizer interface {
	Authorize(ctx context.Context, id Identity, verb policy.ServeVerb, namespace string) (Decision, error)
}

// RolesAuthorizer is the config authoriser: serve.roles.
type RolesAuthorizer struct {
	Roles []policy.ServeRole
}

func (a RolesAuthorizer) Authorize(_ context.Context, id Identity, verb policy.ServeVerb, namespace string) (Decision, error) {
	for _, r := range a.Roles {
		if !contains(r.Verbs, verb.Name) {
			continue
		}
		// "*" covers every namespace and the cluster-wide trail; a
		// listed namespace covers only itself.
		if !contains(r.Namespaces, "*") && (namespace == "" || !contains(r.Namespaces, namespace)) {
			continue
		}
		for _, sub := range r.Subjects {
			if sub.User != "" && sub.User == id.User || sub.Group != "" && contains(id.Groups, sub.Group) {
				return Decision{Allowed: true, Reason: "role " + r.Name}, nil
			}
		}
	}
	return Decision{Reason: "no role grants it"}, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// cachingAuthorizer remembers decisions: allowed ones for allowTTL,
// denied ones for denyTTL (decisionAllowTTL and decisionDenyTTL in the
// service). Errors are not cached.
type cachingAuthorizer struct {
	next              Authorizer
	allowTTL, denyTTL time.Duration
	answers           *answerCache[string, Decision]
}

func newCachingAuthorizer(next Authorizer, allowTTL, denyTTL time.Duration) *cachingAuthorizer {
	return &cachingAuthorizer{next: next, allowTTL: allowTTL, denyTTL: denyTTL, answers: newAnswerCache[string, Decision]()}
}

func (c *cachingAuthorizer) Authorize(ctx context.Context, id Identity, verb policy.ServeVerb, namespace string) (Decision, error) {
	k := strings.Join([]string{id.Kind, id.User, id.UID, strings.Join(id.Groups, "\x00"), verb.Name, namespace}, "\x01")
	now := time.Now()
	if d, hit := c.answers.get(k, now); hit {
		return d, nil
	}
	d, err := c.next.Authorize(ctx, id, verb, namespace)
	if err != nil {
		return d, err
	}
	ttl := c.denyTTL
	if d.Allowed {
		ttl = c.allowTTL
	}
	c.answers.put(k, d, d.Allowed, now, now.Add(ttl))
	return d, nil
}
