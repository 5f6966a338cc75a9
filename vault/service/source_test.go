package service

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
)

// TestUnauthenticatedLimitPerIPv6Network: the limit on unauthenticated
// requests (each a record in the trail, each made-up token a TokenReview)
// holds per source network for IPv6 — one /64, what a single host or
// customer is routed — not per address: whoever has a /64 has 2^64
// addresses, and got a fresh burst from each. Every refusal still records
// the caller's full address. IPv4 addresses keep their own limits.
func TestUnauthenticatedLimitPerIPv6Network(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", serveExtra: "  rateLimit: 1\n  rateBurst: 3\n"})
	get := func(addr string) int {
		r := httptest.NewRequest(http.MethodGet, "https://vault.example/v1/checkpoints", nil)
		r.RemoteAddr = addr
		w := httptest.NewRecorder()
		e.srv.Service.ServeHTTP(w, r)
		return w.Code
	}
	codes := map[int]int{}
	for i := 1; i <= 10; i++ {
		codes[get(fmt.Sprintf("[2001:db8:1:2::%x]:4431", i))]++
	}
	if codes[http.StatusUnauthorized] != 3 || codes[http.StatusTooManyRequests] != 7 {
		t.Errorf("10 unauthenticated requests from 10 addresses of one /64: %v, want 3 refused (the burst) and 7 limited", codes)
	}
	if recs := e.records(audit.Filter{Actor: "unauthenticated:2001:db8:1:2::1"}); len(recs) != 1 {
		t.Errorf("records of the first address: %d, want 1 under its full address", len(recs))
	}
	if c := get("[2001:db8:1:3::1]:4431"); c != http.StatusUnauthorized {
		t.Errorf("another /64: %d, want 401 (a limit of its own)", c)
	}
	if c := get("192.0.2.1:4431"); c != http.StatusUnauthorized {
		t.Errorf("an IPv4 address: %d, want 401 (a limit of its own)", c)
	}
}

// TestRateLimitTableBounded: the per-identity limiters (one per source
// address or /64 for requests not authenticated yet) stay within
// maxCacheEntries when more identities than that were seen within the
// minute after which an idle limiter may go: the table grew without bound
// (and every newcomer scanned it whole, under the lock every request
// takes).
func TestRateLimitTableBounded(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	s := e.srv.Service
	for i := range maxCacheEntries + 2000 {
		s.allow(Identity{Kind: "unauthenticated", User: fmt.Sprintf("2001:db8:%x::/64", i)})
	}
	s.limMu.Lock()
	n := len(s.limiters)
	s.limMu.Unlock()
	if n > maxCacheEntries {
		t.Errorf("%d limiters after %d identities, want at most %d", n, maxCacheEntries+2000, maxCacheEntries)
	}
}

// TestTrailFailureTellsUnauthenticatedNothing: when the trail cannot
// record the refusal of a caller nobody has authenticated, the 503 says
// so, not why — the trail's error (its file, the disk's state) is for the
// service's log, as /readyz keeps the store's.
func TestTrailFailureTellsUnauthenticatedNothing(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	must(t, e.srv.Trail.Close())
	a := e.get(e.client(""), "/v1/checkpoints")
	if a.code != http.StatusServiceUnavailable {
		t.Fatalf("anonymous, trail closed: %d %s, want 503", a.code, a.body)
	}
	if strings.Contains(string(a.body), audit.ErrClosed.Error()) || strings.Contains(string(a.body), audit.ErrNotRecorded.Error()) {
		t.Errorf("the 503 to an unauthenticated caller tells the trail's error: %s", a.body)
	}
}
