package service

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// FuzzParseRange: any Range header against any size either errs or gives
// a range inside the object.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-99", "bytes=100-", "bytes=-50", "bytes=5-1", "bytes=0-0,5-9", "items=1-2", "bytes=99999999999999999999-"} {
		f.Add(s, int64(1000))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		start, n, partial, err := ParseRange(h, size)
		if err != nil {
			return
		}
		if start < 0 || n < 0 || start+n > size || (!partial && (start != 0 || n != size)) || (partial && n == 0) {
			t.Fatalf("ParseRange(%q, %d) = %d, %d, %v: outside the object", h, size, start, n, partial)
		}
	})
}

// FuzzParseListQuery: any query string is refused or gives a bounded
// query whose key prefix matches its filters.
func FuzzParseListQuery(f *testing.F) {
	for _, s := range []string{"", "namespace=payments&pod=api-0&limit=10", "cursor=a%2Fb&since=2026-01-01T00:00:00Z", "limit=0", "pod=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseListQuery(v)
		if err != nil {
			return
		}
		if q.Limit < 1 || q.Limit > MaxPageSize || len(q.After) > maxQueryValue {
			t.Fatalf("%q: limit %d, cursor %d bytes", raw, q.Limit, len(q.After))
		}
	})
}

// FuzzAuditFilter: any query string is refused or parsed.
func FuzzAuditFilter(f *testing.F) {
	f.Add("since=2026-01-01T00:00:00Z&outcome=denied&limit=5&newest=true")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		ParseAuditFilter(v)
	})
}

// FuzzDecodeCheckpointList: the client's parsing of a listing answer (from
// a service it does not trust) never panics.
func FuzzDecodeCheckpointList(f *testing.F) {
	f.Add([]byte(`{"items":[{"id":"a","base":"n/p/c/x","objects":[{"key":"n/p/c/x.tar.age","size":3}],"manifest":"eyJ9","signatures":{".sig":"AA=="}}],"next":"n/p/c/x"}`))
	f.Add([]byte(`{"items":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var l remote.CheckpointList
		remote.DecodeJSON(bytes.NewReader(b), &l)
	})
}

// FuzzAuditQuery: any query of GET /v1/audit/records — filters, cursor,
// limit, order — is refused or answered from a real trail with a page of
// at most its limit of records that match its filters, in the order asked.
func FuzzAuditQuery(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		f.Fatal(err)
	}
	l, err := audit.Open(audit.Path(dir), audit.Options{Node: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })
	ctx := context.Background()
	for i := range 40 {
		rec := audit.Record{Actor: fmt.Sprintf("cert:user-%d", i%3), Action: []string{"listed", "got", "fetched", "denied"}[i%4],
			Subject: fmt.Sprintf("payments/api-%d/app/x", i%5), Namespace: []string{"payments", "other"}[i%2], Outcome: audit.OK}
		if rec.Action == "denied" {
			rec.Outcome = audit.Denied
		}
		if _, err := l.Append(ctx, rec); err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{"", "limit=5", "limit=5&cursor=5", "cursor=18446744073709551615", "cursor=-1", "cursor=abc",
		"actor=cert:user-1&newest=true&limit=3", "action=denied&outcome=denied", "namespace=other&cursor=10&newest=true"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseAuditFilter(v)
		if err != nil {
			return
		}
		p, err := l.Query(ctx, flt)
		if err != nil {
			return
		}
		limit := flt.Limit
		if limit == 0 {
			limit = audit.DefaultLimit
		}
		if len(p.Records) > limit {
			t.Fatalf("%q: %d records, limit %d", raw, len(p.Records), limit)
		}
		for i, r := range p.Records {
			if !flt.Match(&r) {
				t.Fatalf("%q: record %d does not match the filter", raw, r.Seq)
			}
			if i > 0 && (flt.Newest && r.Seq >= p.Records[i-1].Seq || !flt.Newest && r.Seq <= p.Records[i-1].Seq) {
				t.Fatalf("%q: records out of order (newest=%v): %d after %d", raw, flt.Newest, r.Seq, p.Records[i-1].Seq)
			}
		}
	})
}

// FuzzTokenExpiry: any bearer token either has no expiry or one read from
// a numeric exp claim of a three-part compact JWT, within Unix time; the
// JWT a test builds round-trips.
func FuzzTokenExpiry(f *testing.F) {
	jwt := func(claims string) string {
		return "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".c2ln"
	}
	for _, s := range []string{"", "garbage", "a.b.c", jwt(`{"exp":1700000000}`), jwt(`{"exp":1.7e9}`), jwt(`{"exp":"soon"}`),
		jwt(`{"exp":-1}`), jwt(`{"exp":1e300}`), jwt(`{}`), jwt(`{"exp":1700000000`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		exp, ok := tokenExpiry(token)
		if !ok {
			if !exp.IsZero() {
				t.Fatalf("no expiry, but a time %v", exp)
			}
			return
		}
		if strings.Count(token, ".") != 2 || len(token) > maxTokenBytes || exp.Unix() < 0 || exp.Unix() > 1<<40 {
			t.Fatalf("expiry %v from %q", exp, token)
		}
		if back, ok := tokenExpiry(jwt(fmt.Sprintf(`{"exp":%d}`, exp.Unix()))); !ok || !back.Equal(exp) {
			t.Fatalf("expiry %v does not round-trip: %v %v", exp, back, ok)
		}
	})
}
