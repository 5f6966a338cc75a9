package manifest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// TestArchiveOfAlwaysValid: whatever members a (hostile) archive lists —
// repeated names, thousands of files, long or control-character names,
// directories — ArchiveOf yields a section the manifest accepts, so the
// file listing can never be the reason a real checkpoint is not vaulted.
func TestArchiveOfAlwaysValid(t *testing.T) {
	info := &checkpoint.Info{CheckpointBytes: 10, PagesBytes: 8}
	add := func(name, typ string, size int64) {
		info.Members = append(info.Members, checkpoint.Member{Name: name, Type: typ, Size: size})
	}
	add("checkpoint/", "d", 0)
	add("checkpoint/pages-1.img", "f", 8)
	add("spec.dump", "f", 3)
	add("dump.log", "f", 1)
	add("dump.log", "f", 2) // repeated: the first counts
	add("etc/", "d", 0)
	add(strings.Repeat("x", 300), "f", 1)
	add("evil\x1b[2Jname", "f", 1)
	add("link", "l", 0)
	for i := range 2000 {
		add(fmt.Sprintf("extra/%04d", i), "f", 1)
	}
	info.MemberCount = len(info.Members)
	a := ArchiveOf(info)
	if err := a.validate(1 << 20); err != nil {
		t.Fatalf("ArchiveOf gave an invalid section: %v", err)
	}
	if len(a.Files) != maxFiles {
		t.Errorf("%d files, want the cap %d", len(a.Files), maxFiles)
	}
	want := map[string]int64{"dump.log": 1, "link": 0, "spec.dump": 3}
	for _, f := range a.Files {
		if w, ok := want[f.Name]; ok {
			if f.Size != w {
				t.Errorf("%s: size %d, want %d", f.Name, f.Size, w)
			}
			delete(want, f.Name)
		}
		if strings.HasPrefix(f.Name, "checkpoint/") || strings.HasSuffix(f.Name, "/") || strings.Contains(f.Name, "\x1b") {
			t.Errorf("%q should not be listed", f.Name)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing from files: %v", want)
	}
}
