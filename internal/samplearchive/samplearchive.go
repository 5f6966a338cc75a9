// Package samplearchive generates container checkpoint archives in the
// layouts CRI-O and containerd write, for tests and the demo.
//
// CRIU cannot dump processes on every kernel a test runs on, so the
// archives are synthetic but faithful where it matters to checkpoint-vault
// and to checkpointctl: the member names and kinds (with or without a "./"
// prefix), config.dump and spec.dump as each engine writes them (identity
// in spec.dump annotations), real CRIU image framing for inventory.img,
// pstree.img and stats-dump (so `checkpointctl show` and `checkpointctl
// inspect --stats` accept them), a pages-1.img of the requested size filled
// with seeded pseudo-random bytes (deterministic for a seed), and a
// rootfs-diff.tar (gzip-compressed for containerd, as containerd does).
package samplearchive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Engine is the container engine whose layout is generated.
type Engine int

const (
	CRIO Engine = iota
	Containerd
)

func (e Engine) String() string {
	if e == Containerd {
		return "containerd"
	}
	return "cri-o"
}

// DefaultTime is the checkpoint time used when Options.CheckpointedAt is
// zero, so that archives are reproducible.
var DefaultTime = time.Date(2026, 3, 13, 21, 43, 6, 0, time.UTC)

// Options describes one archive. Zero values get sensible defaults.
type Options struct {
	Engine    Engine
	Namespace string // default "default"
	Pod       string // default "app-7d4b9c"
	Container string // default "app"
	Image     string // default "registry.example/app:1.0"
	// MemoryBytes is the size of checkpoint/pages-1.img (default 64 KiB;
	// a negative value means empty).
	MemoryBytes    int64
	CheckpointedAt time.Time // default DefaultTime
	// DotSlash prefixes every member name with "./", as some runtimes do.
	DotSlash bool
	// Seed makes the page contents and the container id; the same options
	// always give the same bytes.
	Seed int64

	// Annotations are added to (or replace) spec.dump's annotations.
	Annotations map[string]string
	// Override replaces a member's content (or adds a member) by name,
	// e.g. {"spec.dump": []byte("{")} — for tests of bad archives.
	Override map[string][]byte
	// Omit leaves members out by name (without "./"), e.g. "config.dump"
	// or "checkpoint/" for the whole directory.
	Omit []string
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.Pod == "" {
		o.Pod = "app-7d4b9c"
	}
	if o.Container == "" {
		o.Container = "app"
	}
	if o.Image == "" {
		o.Image = "registry.example/app:1.0"
	}
	if o.MemoryBytes == 0 {
		o.MemoryBytes = 64 << 10
	} else if o.MemoryBytes < 0 {
		o.MemoryBytes = 0
	}
	if o.CheckpointedAt.IsZero() {
		o.CheckpointedAt = DefaultTime
	}
	return o
}

// ContainerID is the 64-hex-digit container id the archive for opts
// carries in config.dump.
func ContainerID(opts Options) string {
	o := opts.withDefaults()
	h := sha256.Sum256(fmt.Appendf(nil, "%d/%s/%s/%s/%d", o.Engine, o.Namespace, o.Pod, o.Container, o.Seed))
	return hex.EncodeToString(h[:])
}

// Filename is the name the kubelet gives the archive:
// checkpoint-<pod>_<namespace>-<container>-<RFC 3339 time>.tar.
func Filename(opts Options) string {
	o := opts.withDefaults()
	return fmt.Sprintf("checkpoint-%s_%s-%s-%s.tar", o.Pod, o.Namespace, o.Container, o.CheckpointedAt.Format(time.RFC3339))
}

// WriteFile writes the archive to path (mode 0600, as the runtimes do).
func WriteFile(path string, opts Options) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := Write(bw, opts); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteDir writes the archive into dir under its kubelet name and returns
// the full path.
func WriteDir(dir string, opts Options) (string, error) {
	p := filepath.Join(dir, Filename(opts))
	return p, WriteFile(p, opts)
}

type member struct {
	name string
	dir  bool
	size int64
	data []byte
	// stream, when set, produces size bytes instead of data.
	stream func(w io.Writer) error
}

// Write writes the archive for opts to w as an uncompressed tar.
func Write(w io.Writer, opts Options) error {
	o := opts.withDefaults()
	members, err := o.members()
	if err != nil {
		return err
	}
	omit := map[string]bool{}
	for _, n := range o.Omit {
		omit[n] = true
	}
	tw := tar.NewWriter(w)
	for _, m := range members {
		if omit[m.name] || (len(m.name) > 11 && m.name[:11] == "checkpoint/" && omit["checkpoint/"]) {
			continue
		}
		if data, ok := o.Override[m.name]; ok {
			m.data, m.size, m.stream = data, int64(len(data)), nil
		}
		name := m.name
		if o.DotSlash {
			name = "./" + name
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    0o600,
			ModTime: o.CheckpointedAt,
			Format:  tar.FormatPAX,
		}
		if m.dir {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o700
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, m.size
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("samplearchive: writing header of %s: %w", name, err)
		}
		switch {
		case m.stream != nil:
			err = m.stream(tw)
		case len(m.data) > 0:
			_, err = tw.Write(m.data)
		}
		if err != nil {
			return fmt.Errorf("samplearchive: writing %s: %w", name, err)
		}
	}
	// Added members (in Override but not generated), in name order.
	known := map[string]bool{}
	for _, m := range members {
		known[m.name] = true
	}
	var extra []string
	for n := range o.Override {
		if !known[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		name := n
		if o.DotSlash {
			name = "./" + n
		}
		data := o.Override[n]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), ModTime: o.CheckpointedAt, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func (o Options) members() ([]member, error) {
	id := ContainerID(o)
	created := o.CheckpointedAt.Add(-time.Hour)
	config, err := json.MarshalIndent(o.configDump(id, created), "", "  ")
	if err != nil {
		return nil, err
	}
	spec, err := json.MarshalIndent(o.specDump(id, created), "", "  ")
	if err != nil {
		return nil, err
	}
	rootfs, err := o.rootfsDiff()
	if err != nil {
		return nil, err
	}
	pages := o.MemoryBytes
	seed := o.Seed
	ms := []member{
		{name: "checkpoint/", dir: true},
		{name: "checkpoint/inventory.img", data: inventoryImg()},
		{name: "checkpoint/pstree.img", data: pstreeImg()},
		{name: "checkpoint/pages-1.img", size: pages, stream: func(w io.Writer) error {
			_, err := io.CopyN(w, NewPageReader(seed), pages)
			return err
		}},
		{name: "config.dump", data: config},
		{name: "spec.dump", data: spec},
		{name: "stats-dump", data: statsDump(pages)},
		{name: "dump.log", data: []byte("(00.000000) Version: 4.1 (gitid 0)\n(00.120000) Dumping finished successfully\n")},
		{name: "rootfs-diff.tar", data: rootfs},
	}
	if o.Engine == CRIO {
		ms = append(ms,
			member{name: "bind.mounts", data: []byte("[]")},
			member{name: "deleted.files", data: []byte("[]")},
		)
	} else {
		status := fmt.Appendf(nil, `{"CreatedAt":%d,"StartedAt":%d,"FinishedAt":0,"ExitCode":0,"Pid":4242,"Reason":"","Message":""}`,
			created.UnixNano(), created.Add(time.Second).UnixNano())
		ms = append(ms,
			member{name: "status.dump", data: status},
			member{name: "status", data: status},
			member{name: "container.log", data: []byte("2026-03-13T20:43:07Z stdout F started\n")},
		)
	}
	for i := range ms {
		if !ms[i].dir && ms[i].stream == nil {
			ms[i].size = int64(len(ms[i].data))
		}
	}
	return ms, nil
}

// configDump mirrors checkpointctl's metadata.ContainerConfig.
func (o Options) configDump(id string, created time.Time) map[string]any {
	name := o.Container
	if o.Engine == CRIO {
		name = fmt.Sprintf("k8s_%s_%s_%s_%s_0", o.Container, o.Pod, o.Namespace, podUID(o))
	}
	return map[string]any{
		"id":               id,
		"name":             name,
		"rootfsImage":      o.Image,
		"rootfsImageRef":   "sha256:" + id[:64],
		"rootfsImageName":  o.Image,
		"runtime":          "runc",
		"createdTime":      created,
		"checkpointedTime": o.CheckpointedAt,
		"restoredTime":     time.Time{},
		"restored":         false,
	}
}

func podUID(o Options) string {
	h := sha256.Sum256([]byte("uid/" + o.Namespace + "/" + o.Pod))
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

func (o Options) specDump(id string, created time.Time) map[string]any {
	var ann map[string]string
	if o.Engine == CRIO {
		meta, _ := json.Marshal(map[string]any{"name": o.Container, "attempt": 0})
		ann = map[string]string{
			"io.container.manager":                           "cri-o",
			"io.kubernetes.pod.name":                         o.Pod,
			"io.kubernetes.pod.namespace":                    o.Namespace,
			"io.kubernetes.pod.uid":                          podUID(o),
			"io.kubernetes.container.name":                   o.Container,
			"io.kubernetes.cri-o.Metadata":                   string(meta),
			"io.kubernetes.cri-o.ContainerID":                id,
			"io.kubernetes.cri-o.ContainerType":              "container",
			"io.kubernetes.cri-o.Created":                    created.Format(time.RFC3339Nano),
			"io.kubernetes.cri-o.ImageName":                  o.Image,
			"io.kubernetes.cri-o.ImageRef":                   "sha256:" + id,
			"io.kubernetes.cri-o.IP.0":                       "10.85.0.12",
			"io.kubernetes.cri-o.Name":                       fmt.Sprintf("k8s_%s_%s_%s_%s_0", o.Container, o.Pod, o.Namespace, podUID(o)),
			"io.kubernetes.cri-o.SandboxName":                fmt.Sprintf("k8s_%s_%s_%s_0", o.Pod, o.Namespace, podUID(o)),
			"io.kubernetes.cri-o.Annotations":                "{}",
			"io.kubernetes.cri-o.Labels":                     `{"io.kubernetes.container.name":"` + o.Container + `"}`,
			"io.kubernetes.container.restartCount":           "0",
			"io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
		}
	} else {
		ann = map[string]string{
			"io.kubernetes.cri.container-type":    "container",
			"io.kubernetes.cri.container-name":    o.Container,
			"io.kubernetes.cri.sandbox-name":      o.Pod,
			"io.kubernetes.cri.sandbox-namespace": o.Namespace,
			"io.kubernetes.cri.sandbox-uid":       podUID(o),
			"io.kubernetes.cri.sandbox-id":        ContainerID(Options{Engine: o.Engine, Namespace: o.Namespace, Pod: o.Pod, Container: "POD", Seed: o.Seed}),
			"io.kubernetes.cri.image-name":        o.Image,
		}
	}
	for k, v := range o.Annotations {
		ann[k] = v
	}
	return map[string]any{
		"ociVersion": "1.2.0",
		"process": map[string]any{
			"user": map[string]any{"uid": 0, "gid": 0},
			"args": []string{"/app"},
			"env":  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"cwd":  "/",
		},
		"root":        map[string]any{"path": "/var/lib/containers/storage/overlay/" + id[:12] + "/merged"},
		"hostname":    o.Pod,
		"annotations": ann,
		"linux":       map[string]any{"namespaces": []map[string]string{{"type": "pid"}, {"type": "mount"}}},
	}
}

// rootfsDiff is a small tar of the container's changed files; containerd
// gzips it despite the .tar name.
func (o Options) rootfsDiff() ([]byte, error) {
	var buf bytes.Buffer
	var w io.Writer = &buf
	var gz *gzip.Writer
	if o.Engine == Containerd {
		gz = gzip.NewWriter(&buf)
		w = gz
	}
	tw := tar.NewWriter(w)
	content := []byte("written by the container\n")
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/state.txt", Mode: 0o644, Size: int64(len(content)), ModTime: o.CheckpointedAt}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// CRIU image magics (criu/include/magic.h; go-criu/v8/magic).
const (
	magicImgCommon  = 0x54564319
	magicImgService = 0x55105940
	magicInventory  = 0x58313116
	magicPstree     = 0x50273030
	magicStats      = 0x57093306
)

// criuImage frames protobuf entries the way CRIU does: magic(s), then per
// entry a little-endian uint32 length and the message.
func criuImage(magics []uint32, entries ...[]byte) []byte {
	var b []byte
	for _, m := range magics {
		b = binary.LittleEndian.AppendUint32(b, m)
	}
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

func inventoryImg() []byte {
	var e []byte
	e = protowire.AppendTag(e, 1, protowire.VarintType) // img_version
	e = protowire.AppendVarint(e, 2)                    // CRIU_IMAGES_V1_1
	e = protowire.AppendTag(e, 2, protowire.VarintType) // fdinfo_per_id
	e = protowire.AppendVarint(e, 1)
	e = protowire.AppendTag(e, 4, protowire.VarintType) // ns_per_id
	e = protowire.AppendVarint(e, 1)
	return criuImage([]uint32{magicInventory}, e)
}

func pstreeImg() []byte {
	var e []byte
	for field, v := range []uint64{1: 1, 2: 0, 3: 1, 4: 1} {
		if field == 0 {
			continue
		}
		e = protowire.AppendTag(e, protowire.Number(field), protowire.VarintType) // pid, ppid, pgid, sid
		e = protowire.AppendVarint(e, v)
	}
	e = protowire.AppendTag(e, 5, protowire.VarintType) // threads
	e = protowire.AppendVarint(e, 1)
	return criuImage([]uint32{magicImgCommon, magicPstree}, e)
}

func statsDump(pagesBytes int64) []byte {
	pages := uint64(pagesBytes / 4096)
	var d []byte
	for _, f := range []struct {
		n protowire.Number
		v uint64
	}{
		{1, 1200}, // freezing_time (µs)
		{2, 52000},
		{3, 31000},
		{4, 9000},
		{5, pages}, // pages_scanned
		{6, 0},
		{7, pages}, // pages_written
		{9, 0},     // pages_lazy
	} {
		d = protowire.AppendTag(d, f.n, protowire.VarintType)
		d = protowire.AppendVarint(d, f.v)
	}
	var e []byte
	e = protowire.AppendTag(e, 1, protowire.BytesType) // dump
	e = protowire.AppendBytes(e, d)
	return criuImage([]uint32{magicImgService, magicStats}, e)
}

// NewPageReader returns an endless stream of seeded pseudo-random bytes
// (ChaCha8), the content of pages-1.img. It is fast (GB/s), so large
// archives are cheap to make.
func NewPageReader(seed int64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], uint64(seed))
	// The seed label keeps the package's former name on purpose: changing
	// it would change every generated archive's bytes for a given seed.
	copy(s[8:], "ckvault testarchive pages")
	return rand.NewChaCha8(s)
}
