package store

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestValidKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"a", true},
		{"ns/pod/ctr/2026-03-13T21:43:06Z-node-a-1234.tar.age", true},
		{"a/b/c", true},
		{"a..b/c", true},
		{"...", true},
		{"", false},
		{"/abs", false},
		{"a/../b", false},
		{"..", false},
		{"a/..", false},
		{"./a", false},
		{"a//b", false},
		{"a/", false},
		{"a\\b", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"a\x7fb", false},
		{"\xff", false},
		{strings.Repeat("a", MaxKeyLen), true},
		{strings.Repeat("a", MaxKeyLen+1), false},
	}
	for _, tt := range tests {
		err := ValidKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("ValidKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"", "a", "a/", "a/b/"} {
		if err := ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "../", "a//", "/a"} {
		if err := ValidPrefix(p); err == nil {
			t.Errorf("ValidPrefix(%q) accepted", p)
		}
	}
}

// FuzzValidKey checks the property the file store relies on: a key that
// ValidKey accepts, joined to a root, stays inside the root, and is
// unchanged by path cleaning (so it names exactly one file).
func FuzzValidKey(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "a/./b", "a\\..\\b", "/etc/passwd", "a\x00", "ns/pod/c.tar.age"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if ValidKey(key) != nil {
			return
		}
		if !filepath.IsLocal(key) {
			t.Fatalf("valid key %q is not local", key)
		}
		if filepath.Clean(key) != key {
			t.Fatalf("valid key %q changes under Clean: %q", key, filepath.Clean(key))
		}
		root := "/root/store"
		if j := filepath.Join(root, key); !strings.HasPrefix(j, root+"/") {
			t.Fatalf("valid key %q escapes: %q", key, j)
		}
	})
}
