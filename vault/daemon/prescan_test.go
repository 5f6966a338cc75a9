package daemon

import (
	"bytes"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

func TestPrescan(t *testing.T) {
	good := func(o samplearchive.Options) []byte { return archiveBytes(t, o) }
	crio := good(samplearchive.Options{Namespace: "ns-a", Pod: "p", Container: "c-1"})
	for _, tt := range []struct {
		name   string
		b      []byte
		reason admit.Reason
	}{
		{"crio", crio, ""},
		{"containerd dot-slash", good(samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true, Namespace: "ns-a", Pod: "p", Container: "c-1"}), ""},
		{"empty", nil, admit.ReasonTruncated},
		{"text", bytes.Repeat([]byte("hello "), 400), admit.ReasonNotACheckpoint},
		{"cut mid-member", crio[:len(crio)-3000], admit.ReasonTruncated},
		{"no end marker", crio[:len(crio)-1024], admit.ReasonTruncated},
		{"no config.dump", good(samplearchive.Options{Omit: []string{"config.dump"}}), admit.ReasonNotACheckpoint},
		{"no checkpoint dir", good(samplearchive.Options{Omit: []string{"checkpoint/"}}), admit.ReasonNotACheckpoint},
		{"bad spec", good(samplearchive.Options{Override: map[string][]byte{"spec.dump": []byte("{")}}), admit.ReasonNotACheckpoint},
	} {
		t.Run(tt.name, func(t *testing.T) {
			info, err := prescan(bytes.NewReader(tt.b), int64(len(tt.b)))
			if got := admit.ReasonOf(err); got != tt.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, tt.reason)
			}
			if err == nil && (info.Identity != checkpoint.Identity{Namespace: "ns-a", Pod: "p", Container: "c-1"}) {
				t.Fatalf("identity %v", info.Identity)
			}
		})
	}
}

// FuzzPrescan: the pre-scan must never panic, and must accept — with the
// same identity — every archive the full one-pass parser accepts (else a
// valid checkpoint could never be vaulted, or be encrypted to the wrong
// namespace's recipients).
func FuzzPrescan(f *testing.F) {
	// The smallest archives that pass: only the members the parsers
	// require (about 5.5 KB; every exec and every minimization step costs
	// in proportion to the input).
	minimal := []string{"stats-dump", "dump.log", "rootfs-diff.tar", "bind.mounts", "deleted.files",
		"checkpoint/inventory.img", "checkpoint/pstree.img"}
	f.Add(archiveBytes(f, samplearchive.Options{MemoryBytes: -1, Omit: minimal}))
	f.Add(archiveBytes(f, samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true, MemoryBytes: 16, Omit: minimal}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pre, perr := prescan(bytes.NewReader(b), int64(len(b)))
		full, ferr := checkpoint.Parse(bytes.NewReader(b), checkpoint.Limits{})
		if ferr == nil {
			if perr != nil {
				t.Fatalf("full parser accepts, pre-scan rejects: %v", perr)
			}
			if pre.Identity != full.Identity || pre.ContainerID != full.ContainerID || !pre.Checkpointed.Equal(full.Checkpointed) {
				t.Fatalf("pre-scan identity %v differs from the stream's %v", pre.Identity, full.Identity)
			}
		}
	})
}
