package manifest

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// sealing is a Sealing as the daemon builds it after one pass.
func sealing(t testing.TB) Sealing {
	t.Helper()
	info := &checkpoint.Info{
		Identity:     checkpoint.Identity{Namespace: "payments", Pod: "api-0", Container: "server"},
		Engine:       "cri-o",
		Runtime:      "runc",
		ContainerID:  "3f1c6d2e9a7b",
		Image:        "registry.example/api:1",
		Checkpointed: time.Date(2026, 3, 13, 21, 43, 6, 0, time.UTC),
		MemberCount:  3,
	}
	key, err := NewKey(KeyInput{Namespace: "payments", Pod: "api-0", Container: "server", Node: "node-a",
		CheckpointedAt: info.Checkpointed})
	if err != nil {
		t.Fatal(err)
	}
	return Sealing{Object: key, Node: "node-a", OriginalName: "checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar",
		Info: info, CheckpointedAt: info.Checkpointed,
		Plaintext:  NewDigest(sha256.Sum256([]byte("p")), 4096),
		Ciphertext: NewDigest(sha256.Sum256([]byte("c")), 4096+16+200),
		Recipients: []string{"ckfp1bbbbbbbbbbbbbbbb", "ckfp1aaaaaaaaaaaaaaaa", "ckfp1bbbbbbbbbbbbbbbb"},
		VaultedAt:  time.Date(2026, 3, 13, 21, 43, 8, 0, time.UTC), ToolVersion: "test"}
}

// TestNewKeyUnique: two archives identical in every metadata field (an idle
// container checkpointed twice in one second, equal sizes) get different
// keys; under v1 they got the same key and the second overwrote the first.
func TestNewKeyUnique(t *testing.T) {
	in := KeyInput{Namespace: "ns", Pod: "p", Container: "c", Node: "n",
		CheckpointedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ContainerID: "id", OriginalName: "x.tar", Size: 10}
	v1a, _ := BaseKey(in)
	v1b, _ := BaseKey(in)
	if v1a != v1b {
		t.Fatal("v1 derivation is not deterministic")
	}
	seen := map[string]bool{}
	for range 1000 {
		k, err := NewKey(in)
		if err != nil {
			t.Fatal(err)
		}
		if seen[k] {
			t.Fatalf("NewKey repeated %s", k)
		}
		seen[k] = true
		p, ok := ParseKey(k)
		if !ok || p.Namespace != "ns" || p.Node != "n" || len(p.ShortID) != 16 || !p.Checkpointed.Equal(in.CheckpointedAt) {
			t.Fatalf("ParseKey(%s) = %+v, %v", k, p, ok)
		}
	}
}

// TestNewBuildsValidV2: the one constructor yields a valid v2 manifest that
// round-trips through Parse, with recipients sorted and unique.
func TestNewBuildsValidV2(t *testing.T) {
	m, err := New(sealing(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != FormatV2 || len(m.Recipients) != 2 || m.Recipients[0] > m.Recipients[1] {
		t.Fatalf("New = format %s, recipients %v", m.Format, m.Recipients)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(New(...)): %v", err)
	}
	if back.Object != m.Object {
		t.Fatalf("object %s, want %s", back.Object, m.Object)
	}
}

// TestV2KeyBinding: a v2 manifest's object must be its fields' prefix plus a
// 16-digit lowercase hex short id; anything else (another pod's prefix, a
// v1-length id, upper case, extra segments) is invalid.
func TestV2KeyBinding(t *testing.T) {
	s := sealing(t)
	prefix := s.Object[:len(s.Object)-16]
	for _, bad := range []string{
		strings.Replace(s.Object, "api-0", "api-1", 1),
		prefix + "0123456789ab",
		prefix + "0123456789ABCDEF",
		prefix + "0123456789abcdeg",
		prefix + "0123456789abcdef0",
		s.Object + "/x",
	} {
		c := s
		c.Object = bad
		if _, err := New(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("object %q: err = %v, want ErrInvalid", bad, err)
		}
	}
}
