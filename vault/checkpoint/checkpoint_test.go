package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/hostiletar"
	"github.com/checkpoint-vault/ckvault/internal/k8sname"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

func archive(t testing.TB, opts samplearchive.Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := samplearchive.Write(&buf, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// onlyReader hides bytes.Reader's other methods (Seek, WriteTo) so the
// parser sees a plain stream that it reads through, member contents
// included: the reference the Inspector (which skips them in its feed)
// is held to.
type onlyReader struct{ io.Reader }

func parse(data []byte) (*Info, error) {
	return Parse(onlyReader{bytes.NewReader(data)}, Limits{})
}

func TestParseEngines(t *testing.T) {
	for _, tt := range []struct {
		name   string
		opts   samplearchive.Options
		engine string
	}{
		{"crio", samplearchive.Options{Engine: samplearchive.CRIO}, EngineCRIO},
		{"containerd", samplearchive.Options{Engine: samplearchive.Containerd}, EngineContainerd},
		{"crio dotslash", samplearchive.Options{Engine: samplearchive.CRIO, DotSlash: true}, EngineCRIO},
		{"containerd dotslash", samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true}, EngineContainerd},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Namespace, tt.opts.Pod, tt.opts.Container = "pay-ments", "api-7f9c", "side-car"
			tt.opts.MemoryBytes = 300 << 10
			data := archive(t, tt.opts)
			info, err := parse(data)
			if err != nil {
				t.Fatal(err)
			}
			want := Identity{Namespace: "pay-ments", Pod: "api-7f9c", Container: "side-car"}
			if info.Identity != want {
				t.Errorf("identity = %v, want %v", info.Identity, want)
			}
			if info.Engine != tt.engine {
				t.Errorf("engine = %q, want %q", info.Engine, tt.engine)
			}
			if info.PagesBytes != 300<<10 {
				t.Errorf("pages = %d", info.PagesBytes)
			}
			if info.CheckpointBytes <= info.PagesBytes || info.RootfsDiffBytes == 0 {
				t.Errorf("checkpoint %d, rootfs-diff %d bytes", info.CheckpointBytes, info.RootfsDiffBytes)
			}
			if info.ContainerID != samplearchive.ContainerID(tt.opts) || info.Image != "registry.example/app:1.0" || info.Runtime != "runc" {
				t.Errorf("id %q image %q runtime %q", info.ContainerID, info.Image, info.Runtime)
			}
			if !info.Checkpointed.Equal(samplearchive.DefaultTime) || !info.Created.Before(info.Checkpointed) {
				t.Errorf("times %v %v", info.Created, info.Checkpointed)
			}
			if info.ArchiveBytes != int64(len(data)) || info.TrailingBytes != 0 {
				t.Errorf("archive %d trailing %d of %d", info.ArchiveBytes, info.TrailingBytes, len(data))
			}
			if info.MemberCount != len(info.Members) || info.Members[0].Name != "checkpoint/" {
				t.Errorf("members %d %v", info.MemberCount, info.Members)
			}
			fn, err := ParseFilename(samplearchive.Filename(tt.opts))
			if err != nil {
				t.Fatal(err)
			}
			if err := CrossCheck(info.Identity, info.Checkpointed, fn); err != nil {
				t.Errorf("cross-check of a matching name: %v", err)
			}
		})
	}
}

func TestCRIUAnnotations(t *testing.T) {
	data := archive(t, samplearchive.Options{Annotations: map[string]string{
		"org.criu.checkpoint.engine.version": "1.33",
		"io.kubernetes.container.name":       "",
		"io.kubernetes.cri-o.Metadata":       "not json",
		"org.criu.checkpoint.container.name": "from-criu",
	}})
	info, err := parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if info.Identity.Container != "from-criu" || info.CheckpointAnnotations["org.criu.checkpoint.engine.version"] != "1.33" {
		t.Errorf("identity %v annotations %v", info.Identity, info.CheckpointAnnotations)
	}
}

func TestParseErrors(t *testing.T) {
	good := archive(t, samplearchive.Options{})
	bigDump := bytes.Repeat([]byte(" "), 1<<20+1)
	tests := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotTar, "empty"},
		{"not tar", bytes.Repeat([]byte("hello world\n"), 200), ErrNotTar, ""},
		{"gzip", []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3}, ErrTruncated, ""},
		{"cut at boundary", good[:len(good)-1024], ErrTruncated, ""},
		{"one zero block", good[:len(good)-512], ErrTruncated, ""},
		{"cut mid member", good[:len(good)/2], ErrTruncated, ""},
		{"cut mid header", good[:len(good)-1024-3000], ErrTruncated, ""},
		{"stale tail", append(append([]byte{}, good...), []byte("old archive bytes")...), ErrTrailingData, "stale tail"},
		{"no checkpoint dir", archive(t, samplearchive.Options{Omit: []string{"checkpoint/"}}), ErrNotCheckpoint, "checkpoint/"},
		{"no config", archive(t, samplearchive.Options{Omit: []string{"config.dump"}}), ErrNotCheckpoint, "config.dump"},
		{"no spec", archive(t, samplearchive.Options{Omit: []string{"spec.dump"}, DotSlash: true}), ErrNotCheckpoint, "spec.dump"},
		{"bad spec", archive(t, samplearchive.Options{Override: map[string][]byte{"spec.dump": []byte("{")}}), ErrNotCheckpoint, "not valid JSON"},
		{"bad config", archive(t, samplearchive.Options{Override: map[string][]byte{"config.dump": []byte("[]")}}), ErrNotCheckpoint, "config.dump"},
		{"oversized spec", archive(t, samplearchive.Options{Override: map[string][]byte{"spec.dump": bigDump}}), ErrTooLarge, "spec.dump"},
		{"no identity", archive(t, samplearchive.Options{Override: map[string][]byte{"spec.dump": []byte(`{"annotations":{}}`)}}), ErrNotCheckpoint, "namespace"},
		{"hostile identity", archive(t, samplearchive.Options{Annotations: map[string]string{"io.kubernetes.pod.namespace": "../../etc"}}), ErrNotCheckpoint, "invalid"},
		{"duplicate spec", archive(t, samplearchive.Options{Override: map[string][]byte{"./spec.dump": []byte("{}")}}), ErrNotCheckpoint, "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := parse(tt.data)
			if err == nil {
				t.Fatalf("accepted: %+v", info)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error %v is not %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q lacks %q", err, tt.msg)
			}
		})
	}
}

// TestTruncatedEverywhere cuts a small archive at every 512-byte boundary
// and a few odd offsets: none of the prefixes may be accepted.
func TestTruncatedEverywhere(t *testing.T) {
	good := archive(t, samplearchive.Options{MemoryBytes: 4096})
	for n := 0; n < len(good); n += 512 {
		for _, k := range []int{n, n + 1, n + 511} {
			if k >= len(good) {
				continue
			}
			if _, err := parse(good[:k]); err == nil {
				t.Fatalf("a %d-byte prefix of a %d-byte archive was accepted", k, len(good))
			}
		}
	}
}

func TestTrailingZeros(t *testing.T) {
	good := archive(t, samplearchive.Options{})
	padded := append(append([]byte{}, good...), make([]byte, 10240)...)
	info, err := parse(padded)
	if err != nil {
		t.Fatal(err)
	}
	if info.ArchiveBytes != int64(len(good)) || info.TrailingBytes != 10240 {
		t.Errorf("archive %d trailing %d", info.ArchiveBytes, info.TrailingBytes)
	}
}

// TestInspectorOneRead feeds the archive through io.MultiWriter alongside
// a hash, as the daemon does, and checks the same verdict as Parse.
func TestInspectorOneRead(t *testing.T) {
	data := archive(t, samplearchive.Options{Engine: samplearchive.Containerd, MemoryBytes: 5 << 20})
	h := sha256.New()
	in := NewInspector(Limits{})
	n, err := io.Copy(io.MultiWriter(h, in), onlyReader{bytes.NewReader(data)})
	if err != nil || n != int64(len(data)) {
		t.Fatalf("copy: %d, %v", n, err)
	}
	info, err := in.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if info.Engine != EngineContainerd || info.PagesBytes != 5<<20 {
		t.Errorf("info %+v", info)
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("the hash branch did not see every byte")
	}
}

// TestInspectorStopsEarly: a non-tar stream fails the copy at once instead
// of being read to the end.
func TestInspectorStopsEarly(t *testing.T) {
	in := NewInspector(Limits{})
	src := io.LimitReader(samplearchive.NewPageReader(1), 1<<30)
	n, err := io.Copy(in, src)
	if err == nil {
		t.Fatal("copy of random bytes into the inspector succeeded")
	}
	if n > 1<<20 {
		t.Errorf("read %d bytes of a non-tar before stopping", n)
	}
	if _, err := in.Finish(); !errors.Is(err, ErrNotTar) {
		t.Errorf("Finish: %v", err)
	}
	in = NewInspector(Limits{})
	in.Write([]byte("partial"))
	in.Abort(errors.New("disk error"))
}

func TestParseFilename(t *testing.T) {
	tests := []struct {
		in   string
		pod  string
		nc   string
		time string
		ok   bool
	}{
		{"checkpoint-web-1_default-app-2026-03-13T21:43:06Z.tar", "web-1", "default-app", "2026-03-13T21:43:06Z", true},
		{"checkpoint-web_a-b-c-d-2024-04-29T20:43:15+08:00.tar", "web", "a-b-c-d", "2024-04-29T20:43:15+08:00", true},
		{"checkpoint-web_ns-c-2024-04-29T20:43:15.123-01:00.tar", "web", "ns-c", "2024-04-29T20:43:15.123-01:00", true},
		{"checkpoint-web_ns-c-2024-04-29T20:43:15Z.tar.tmp", "", "", "", false},
		{"checkpoint-webns-c-2024-04-29T20:43:15Z.tar", "", "", "", false},
		{"checkpoint-web_nsc-2024-04-29T20:43:15Z.tar", "", "", "", false},
		{"checkpoint-web_ns-c-2024-04-29.tar", "", "", "", false},
		{"checkpoint-_ns-c-2024-04-29T20:43:15Z.tar", "", "", "", false},
		{"other.tar", "", "", "", false},
	}
	for _, tt := range tests {
		fn, err := ParseFilename(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseFilename(%q) error %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			continue
		}
		want, _ := time.Parse(time.RFC3339, tt.time)
		if fn.Pod != tt.pod || fn.NamespaceContainer != tt.nc || !fn.Time.Equal(want) {
			t.Errorf("ParseFilename(%q) = %+v", tt.in, fn)
		}
	}
}

func TestCrossCheckMismatch(t *testing.T) {
	fn, _ := ParseFilename("checkpoint-web_ns-a-b-2026-03-13T21:43:06Z.tar")
	at := fn.Time
	if err := CrossCheck(Identity{"ns-a", "web", "b"}, at, fn); err != nil {
		t.Errorf("ns-a/b: %v", err)
	}
	if err := CrossCheck(Identity{"ns", "web", "a-b"}, at.Add(time.Minute), fn); err != nil {
		t.Errorf("ns/a-b: %v", err)
	}
	err := CrossCheck(Identity{"ns", "other", "b"}, at.Add(time.Hour), fn)
	var me *MismatchError
	if !errors.As(err, &me) || strings.Join(me.Fields, ",") != "pod,namespace-container,time" {
		t.Errorf("mismatch: %v", err)
	}
}

// FuzzParse: the parser never panics, accepts only archives read through
// their marker, and holds to its bounds whatever the bytes: the member
// content it reads (the dumps) is no more than the input — a sparse member
// cannot make it expand holes — and the names it keeps stay within
// Limits.MaxListedNameBytes.
func FuzzParse(f *testing.F) {
	small := archive(f, samplearchive.Options{MemoryBytes: 1024})
	f.Add(small)
	f.Add(archive(f, samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true, MemoryBytes: 100}))
	f.Add([]byte{})
	f.Add(make([]byte, 1024))
	for _, s := range hostiletar.Seeds(small) {
		f.Add(s)
	}
	maxNames := (Limits{}).WithDefaults().MaxListedNameBytes
	f.Fuzz(func(t *testing.T, data []byte) {
		var work parseWork
		info, err := parseInto(onlyReader{bytes.NewReader(data)}, Limits{}, &work)
		if work.contentBytes > int64(len(data)) {
			t.Fatalf("read %d bytes of member content from %d bytes of input", work.contentBytes, len(data))
		}
		if err != nil {
			return
		}
		kept := 0
		for _, m := range info.Members {
			kept += len(m.Name)
		}
		if kept > maxNames || len(info.Members) > info.MemberCount {
			t.Fatalf("kept %d bytes of names in %d of %d members", kept, len(info.Members), info.MemberCount)
		}
		if info.CheckpointBytes+info.RootfsDiffBytes > int64(len(data)) {
			t.Fatalf("sizes %d+%d exceed the %d bytes of input", info.CheckpointBytes, info.RootfsDiffBytes, len(data))
		}
		// Property: an accepted archive was read through its marker, and
		// any prefix cut before the marker is refused.
		if info.ArchiveBytes+info.TrailingBytes != int64(len(data)) {
			t.Fatalf("accepted with archive %d + trailing %d != %d bytes", info.ArchiveBytes, info.TrailingBytes, len(data))
		}
		if info.ArchiveBytes >= 512 {
			if _, err := parse(data[:info.ArchiveBytes-512]); err == nil {
				t.Fatal("a prefix without the full end marker was accepted")
			}
		}
		if err := info.Identity.Check(); err != nil {
			t.Fatalf("accepted identity %v: %v", info.Identity, err)
		}
	})
}

// BenchmarkInspector feeds the Inspector as the daemon's seal pipeline
// does, in 1 MiB writes.
func BenchmarkInspector(b *testing.B) {
	data := archive(b, samplearchive.Options{MemoryBytes: 256 << 20})
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		in := NewInspector(Limits{})
		if _, err := io.CopyBuffer(in, onlyReader{bytes.NewReader(data)}, buf); err != nil {
			b.Fatal(err)
		}
		if _, err := in.Finish(); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseFilename(f *testing.F) {
	f.Add("checkpoint-web_a-b-c-d-2024-04-29T20:43:15+08:00.tar")
	f.Add("checkpoint-x_-T.tar")
	f.Fuzz(func(t *testing.T, name string) {
		fn, err := ParseFilename(name)
		if err != nil {
			return
		}
		if !k8sname.Pod.Valid(fn.Pod) || !splittable(fn.NamespaceContainer) || fn.Time.IsZero() {
			t.Fatalf("ParseFilename(%q) = %+v", name, fn)
		}
	})
}

// FuzzInspectorAgreesWithParse: however the archive is cut into writes,
// the Inspector (which skips member contents in place) reaches the same
// verdict, with the same error text and the same Info, as Parse reading
// it as a plain stream.
func FuzzInspectorAgreesWithParse(f *testing.F) {
	small := archive(f, samplearchive.Options{MemoryBytes: 3000})
	f.Add(small, []byte{1, 7, 200})
	f.Add(small[:len(small)-700], []byte{0})
	f.Add(append(append([]byte{}, small...), 1), []byte{3})
	for _, s := range hostiletar.Seeds(small) {
		f.Add(s, []byte{5, 64})
	}
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		want, wantErr := parse(data)
		in := NewInspector(Limits{})
		rest := data
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(cuts) > 0 {
				n = min(n, 1+int(cuts[i%len(cuts)])*int(cuts[i%len(cuts)]))
			}
			if _, err := in.Write(rest[:n]); err != nil {
				break // the parser has refused the archive
			}
			rest = rest[n:]
		}
		got, gotErr := in.Finish()
		if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && wantErr.Error() != gotErr.Error()) {
			t.Fatalf("Parse: %v; Inspector: %v", wantErr, gotErr)
		}
		if wantErr == nil && !reflect.DeepEqual(want, got) {
			t.Fatalf("Parse: %+v\nInspector: %+v", want, got)
		}
	})
}

// TestInspectorAbortWhileSkipping: a read error while the parser is
// skipping a member's contents ends the parse without a verdict, and
// neither side is left waiting.
func TestInspectorAbortWhileSkipping(t *testing.T) {
	data := archive(t, samplearchive.Options{MemoryBytes: 4 << 20})
	in := NewInspector(Limits{})
	if _, err := in.Write(data[:1<<20]); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.Abort(errors.New("disk error"))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Abort did not return")
	}
	if _, err := in.Finish(); err == nil || !strings.Contains(err.Error(), "disk error") {
		t.Errorf("after Abort, Finish = %v; want the read error", err)
	}
}

// TestInspectorWriteAfterFinish: a Write after Finish is an error, not a
// panic or a hang.
func TestInspectorWriteAfterFinish(t *testing.T) {
	in := NewInspector(Limits{})
	in.Finish()
	if _, err := in.Write([]byte("late")); err == nil {
		t.Error("Write after Finish succeeded")
	}
	if _, err := in.Write(nil); err == nil {
		t.Error("empty Write after Finish succeeded")
	}
}

// TestInspectorEmptyWriteAfterRefusal: once the parser has refused the
// archive, every Write reports it, an empty one included (a writer that
// checks only the error of its last, empty Write still learns of it).
func TestInspectorEmptyWriteAfterRefusal(t *testing.T) {
	in := NewInspector(Limits{})
	if _, err := in.Write(bytes.Repeat([]byte{0xff}, 4096)); err == nil {
		t.Fatal("a non-tar block was accepted")
	}
	if _, err := in.Write(nil); err == nil {
		t.Error("empty Write after a refusal succeeded")
	}
	fresh := NewInspector(Limits{})
	if n, err := fresh.Write(nil); n != 0 || err != nil {
		t.Errorf("empty Write to a fresh Inspector = %d, %v; want 0, nil", n, err)
	}
	fresh.Abort(nil)
}

// TestInspectorWriterReusesBuffer: the daemon's seal pipeline reuses its
// read buffer as soon as Write returns, so nothing the parser goes on to
// use (the end-marker tail, names, dumps) may still refer to a written
// slice. The buffer is overwritten after every Write, with non-zero bytes
// (a kept reference would refuse a good archive) and with zeros (it would
// accept one cut before its marker); run with -race, a slice read after
// Write returned is also reported as a race.
func TestInspectorWriterReusesBuffer(t *testing.T) {
	good := archive(t, samplearchive.Options{MemoryBytes: 100_000})
	inputs := map[string][]byte{
		"good":          good,
		"padded":        append(append([]byte{}, good...), make([]byte, 5000)...),
		"no marker":     good[:len(good)-1024],
		"half marker":   good[:len(good)-512],
		"trailing data": append(append(append([]byte{}, good...), make([]byte, 5000)...), 7),
	}
	for name, data := range inputs {
		want, wantErr := parse(data)
		for _, size := range []int{511, 1024, 1025, 4096, 65536} {
			for _, scribble := range []byte{0, 0xa5} {
				in := NewInspector(Limits{})
				buf := make([]byte, size)
				for rest := data; len(rest) > 0; {
					n := copy(buf, rest)
					_, err := in.Write(buf[:n])
					for i := range buf {
						buf[i] = scribble
					}
					if err != nil {
						break
					}
					rest = rest[n:]
				}
				got, gotErr := in.Finish()
				if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && wantErr.Error() != gotErr.Error()) {
					t.Fatalf("%s in %d-byte writes, buffer then overwritten with %#x: Parse: %v; Inspector: %v", name, size, scribble, wantErr, gotErr)
				}
				if wantErr == nil && !reflect.DeepEqual(want, got) {
					t.Fatalf("%s in %d-byte writes, buffer then overwritten with %#x: Parse: %+v\nInspector: %+v", name, size, scribble, want, got)
				}
			}
		}
	}
}
