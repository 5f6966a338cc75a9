package samplearchive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

func members(t *testing.T, data []byte) map[string]*tar.Header {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	m := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		m[h.Name] = h
	}
}

func TestLayouts(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want []string
		not  []string
	}{
		{Options{Engine: CRIO}, []string{"checkpoint/", "checkpoint/pages-1.img", "config.dump", "spec.dump", "bind.mounts", "deleted.files", "stats-dump", "dump.log", "rootfs-diff.tar"}, []string{"status.dump"}},
		{Options{Engine: Containerd}, []string{"checkpoint/", "config.dump", "spec.dump", "status.dump", "status", "container.log", "rootfs-diff.tar"}, []string{"bind.mounts"}},
		{Options{Engine: Containerd, DotSlash: true}, []string{"./checkpoint/", "./config.dump", "./spec.dump"}, []string{"config.dump"}},
		{Options{Omit: []string{"spec.dump", "checkpoint/"}}, []string{"config.dump"}, []string{"spec.dump", "checkpoint/", "checkpoint/pages-1.img"}},
		{Options{Override: map[string][]byte{"extra": []byte("x")}}, []string{"extra"}, nil},
	} {
		var buf bytes.Buffer
		if err := Write(&buf, tt.opts); err != nil {
			t.Fatal(err)
		}
		m := members(t, buf.Bytes())
		for _, n := range tt.want {
			if m[n] == nil {
				t.Errorf("%+v: no member %s", tt.opts, n)
			}
		}
		for _, n := range tt.not {
			if m[n] != nil {
				t.Errorf("%+v: unexpected member %s", tt.opts, n)
			}
		}
	}
}

func TestDeterministicAndSized(t *testing.T) {
	opts := Options{MemoryBytes: 3<<20 + 123, Seed: 7}
	var a, b, c bytes.Buffer
	if err := Write(&a, opts); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, opts); err != nil {
		t.Fatal(err)
	}
	opts.Seed = 8
	if err := Write(&c, opts); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(a.Bytes()) != sha256.Sum256(b.Bytes()) {
		t.Error("same options gave different archives")
	}
	if bytes.Equal(a.Bytes(), c.Bytes()) {
		t.Error("different seeds gave the same archive")
	}
	if got := members(t, a.Bytes())["checkpoint/pages-1.img"].Size; got != 3<<20+123 {
		t.Errorf("pages-1.img size = %d", got)
	}
}

func TestSpecAnnotations(t *testing.T) {
	for _, e := range []Engine{CRIO, Containerd} {
		opts := Options{Engine: e, Namespace: "pay-ments", Pod: "web-1", Container: "side-car"}
		var buf bytes.Buffer
		if err := Write(&buf, opts); err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if h.Name != "spec.dump" {
				continue
			}
			var spec struct{ Annotations map[string]string }
			if err := json.NewDecoder(tr).Decode(&spec); err != nil {
				t.Fatal(err)
			}
			a := spec.Annotations
			if e == CRIO && (a["io.container.manager"] != "cri-o" || a["io.kubernetes.pod.namespace"] != "pay-ments" || a["io.kubernetes.pod.name"] != "web-1" || a["io.kubernetes.container.name"] != "side-car") {
				t.Errorf("CRI-O annotations: %v", a)
			}
			if e == Containerd && (a["io.kubernetes.cri.sandbox-namespace"] != "pay-ments" || a["io.kubernetes.cri.sandbox-name"] != "web-1" || a["io.kubernetes.cri.container-name"] != "side-car") {
				t.Errorf("containerd annotations: %v", a)
			}
			break
		}
	}
}

func TestFilename(t *testing.T) {
	zone := time.FixedZone("", 8*3600)
	got := Filename(Options{Pod: "web", Namespace: "a-b", Container: "c-d", CheckpointedAt: time.Date(2024, 4, 29, 20, 43, 15, 0, zone)})
	if want := "checkpoint-web_a-b-c-d-2024-04-29T20:43:15+08:00.tar"; got != want {
		t.Errorf("Filename = %q, want %q", got, want)
	}
}

// TestCheckpointctl runs the real checkpointctl v1.6.0 over both layouts.
func TestCheckpointctl(t *testing.T) {
	bin := testtools.Path(t, "checkpointctl")
	dir := t.TempDir()
	for _, tt := range []struct {
		opts   Options
		engine string
	}{
		{Options{Engine: CRIO, Namespace: "payments", Pod: "api-0", Container: "server", MemoryBytes: 1 << 20}, "CRI-O"},
		{Options{Engine: Containerd, Namespace: "payments", Pod: "api-0", Container: "server", DotSlash: true}, "containerd"},
	} {
		p, err := WriteDir(dir, tt.opts)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "show", p).CombinedOutput()
		if err != nil {
			t.Fatalf("checkpointctl show %s: %v\n%s", filepath.Base(p), err, out)
		}
		s := string(out)
		for _, w := range []string{"server", "registry.example/app:1.0", ContainerID(tt.opts)[:12], "runc", tt.engine} {
			if !strings.Contains(s, w) {
				t.Errorf("checkpointctl show output lacks %q:\n%s", w, s)
			}
		}
		if tt.opts.MemoryBytes == 1<<20 && !strings.Contains(s, "1.0 MiB") {
			t.Errorf("checkpointctl show does not report the 1 MiB checkpoint:\n%s", s)
		}
		out, err = exec.Command(bin, "inspect", "--stats", p).CombinedOutput()
		if err != nil {
			t.Fatalf("checkpointctl inspect --stats %s: %v\n%s", filepath.Base(p), err, out)
		}
		for _, w := range []string{"server", "CRIU dump statistics", "Pages written"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("checkpointctl inspect output lacks %q:\n%s", w, out)
			}
		}
	}
}

func BenchmarkWrite1GiB(b *testing.B) {
	b.SetBytes(1 << 30)
	for b.Loop() {
		if err := Write(io.Discard, Options{MemoryBytes: 1 << 30}); err != nil {
			b.Fatal(err)
		}
	}
}
