package s3store

import (
	"net/url"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in, host, bucket, prefix string
		ok                       bool
	}{
		{"https://minio.example:9000/vault/prod", "minio.example:9000", "vault", "prod/", true},
		{"https://s3.amazonaws.com/vault", "s3.amazonaws.com", "vault", "", true},
		{"https://h/vault/", "h", "vault", "", true},
		{"https://h/vault/a/b/", "h", "vault", "a/b/", true},
		{"http://127.0.0.1:9000/b", "127.0.0.1:9000", "b", "", true}, // refused later by New unless Insecure
		{"https://h/", "", "", "", false},
		{"https://h", "", "", "", false},
		{"ftp://h/b", "", "", "", false},
		{"https://u:p@h/b", "", "", "", false},
		{"https://h/b?x=1", "", "", "", false},
		{"https://h/b/../x", "", "", "", false},
		{"https://h/b/a//c", "", "", "", false},
		{"file:///var/lib/x", "", "", "", false},
		{"://", "", "", "", false},
	}
	for _, tt := range tests {
		u, b, p, err := ParseURL(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseURL(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err != nil {
			if strings.Contains(err.Error(), "u:p@") {
				t.Errorf("ParseURL(%q) error leaks credentials: %v", tt.in, err)
			}
			continue
		}
		if u.Host != tt.host || b != tt.bucket || p != tt.prefix {
			t.Errorf("ParseURL(%q) = %q %q %q, want %q %q %q", tt.in, u.Host, b, p, tt.host, tt.bucket, tt.prefix)
		}
	}
}

// FuzzParseURL: whatever the input, an accepted URL yields a bucket and a
// prefix that is empty or a valid key plus "/", and an error never repeats
// the password of a URL's user info.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"https://h:9000/b/p", "https://u:secretpw@h/b", "http://h/b/../../x", "https://h/b/%2e%2e/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		u, b, p, err := ParseURL(in)
		if err != nil {
			if pu, perr := url.Parse(in); perr == nil && pu.User != nil {
				if pw, ok := pu.User.Password(); ok && strings.Contains(pw, "secretpw") && strings.Contains(err.Error(), pw) {
					t.Fatalf("error leaks the password %q: %v", pw, err)
				}
			}
			return
		}
		if u.Host == "" || b == "" || strings.Contains(b, "/") {
			t.Fatalf("ParseURL(%q) = host %q bucket %q", in, u.Host, b)
		}
		if p != "" && (!strings.HasSuffix(p, "/") || store.ValidKey(strings.TrimSuffix(p, "/")) != nil) {
			t.Fatalf("ParseURL(%q) prefix %q", in, p)
		}
	})
}

func TestPartSizeFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		size int64
		part uint64
		want uint64
	}{
		{0, 8 * mib, 8 * mib},
		{1 << 30, 8 * mib, 8 * mib},
		{8 * mib * maxParts, 8 * mib, 8 * mib},
		{8*mib*maxParts + 1, 8 * mib, 9 * mib},
		{200 << 30, 16 * mib, 21 * mib},
	} {
		got := partSizeFor(c.size, c.part)
		if got != c.want {
			t.Errorf("partSizeFor(%d, %d) = %d, want %d", c.size, c.part, got, c.want)
		}
		if c.size > 0 && (uint64(c.size)+got-1)/got > maxParts {
			t.Errorf("partSizeFor(%d, %d) = %d needs more than %d parts", c.size, c.part, got, maxParts)
		}
	}
}
