// Package checkpoint reads container checkpoint archives — untrusted input
// — and says what they are: which container of which pod in which
// namespace, written by which engine, with how much memory.
//
// The daemon reads every archive exactly once. An Inspector is an
// io.Writer that receives the plaintext bytes alongside the hashing and
// encryption (through io.MultiWriter or io.TeeReader) and parses the tar
// incrementally on its own goroutine, so identity and completeness come
// from the same single read as the digest:
//
//	in := checkpoint.NewInspector(checkpoint.Limits{})
//	_, err := io.Copy(io.MultiWriter(hash, encryptor, in), file)
//	info, ierr := in.Finish()
//
// An archive is accepted only if it is a tar that reads cleanly through its
// end-of-archive marker (two zero blocks, verified byte for byte: Go's
// archive/tar also reports a clean io.EOF for a file cut at a header
// boundary), holds checkpoint/, config.dump and spec.dump (with or without
// a "./" prefix), each dump decodes as JSON within a size limit, and nothing
// but zero padding follows the marker (non-zero bytes there are the stale
// tail of an older, longer file that the runtime overwrote in place).
//
// Identity comes from spec.dump's annotations (CRI-O's io.kubernetes.* or
// containerd's io.kubernetes.cri.* keys; org.criu.checkpoint.* when
// present); the kubelet's file name is only cross-checked against it,
// because "<namespace>-<container>" in the name cannot be split reliably.
package checkpoint

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// Sentinel errors, for errors.Is; the returned errors wrap them with the
// detail (member name, offset).
var (
	// ErrNotTar: the bytes are not a tar archive (or a corrupt one).
	ErrNotTar = errors.New("not a tar archive")
	// ErrTruncated: the archive ends before its end-of-archive marker.
	ErrTruncated = errors.New("truncated archive: no end-of-archive marker")
	// ErrTrailingData: non-zero bytes follow the end-of-archive marker,
	// typically the stale tail of an older, longer file.
	ErrTrailingData = errors.New("data after the end-of-archive marker")
	// ErrNotCheckpoint: a well-formed tar that lacks what every checkpoint
	// has (checkpoint/, config.dump, spec.dump), or whose dumps are bad.
	ErrNotCheckpoint = errors.New("not a container checkpoint")
	// ErrTooLarge: a dump member, the member count or a name exceeds the
	// limits.
	ErrTooLarge = errors.New("archive exceeds a limit")
	// ErrMemberType: a member of a type no engine writes — a sparse file
	// (whose holes would expand to far more bytes than the archive holds),
	// a device, a FIFO, a global or unknown header. It also wraps
	// ErrNotCheckpoint.
	ErrMemberType = fmt.Errorf("%w: member type not allowed", ErrNotCheckpoint)
)

// Member names, as they appear after any "./" prefix is removed.
const (
	CheckpointDir  = "checkpoint/"
	ConfigDumpFile = "config.dump"
	SpecDumpFile   = "spec.dump"
	RootfsDiffFile = "rootfs-diff.tar"
	pagesPrefix    = "checkpoint/pages-"
)

// Engine names as reported in Info.Engine.
const (
	EngineCRIO       = "cri-o"
	EngineContainerd = "containerd"
	EnginePodman     = "libpod"
)

// Limits bound what an untrusted archive can make a reader hold in memory
// or do. Zero fields get the defaults. Together with the member rules of
// [CheckHeader] they keep the work for an archive proportional to its size
// on disk and the memory kept for it constant: at most MaxListedNameBytes
// of names plus two dumps of MaxDumpSize (archive/tar itself holds one
// header's PAX records or GNU long name, at most 1 MiB, at a time).
type Limits struct {
	// MaxDumpSize bounds config.dump and spec.dump (default 1 MiB).
	MaxDumpSize int64
	// MaxMembers bounds the member count (default 1,000,000).
	MaxMembers int
	// MaxListedMembers bounds Info.Members (default 4096); members beyond
	// it are counted and sized but not listed.
	MaxListedMembers int
	// MaxListedNameBytes bounds the total length of the names kept in
	// Info.Members (default 256 KiB); once reached, further members are
	// counted but not listed.
	MaxListedNameBytes int
	// MaxNameBytes bounds one member name (default 4096, Linux's
	// PATH_MAX). A longer name, which no engine writes and no runtime
	// could restore, refuses the archive (ErrTooLarge).
	MaxNameBytes int
}

// WithDefaults returns l with the default for every zero field: the
// limits a reader actually applies.
func (l Limits) WithDefaults() Limits {
	if l.MaxDumpSize <= 0 {
		l.MaxDumpSize = 1 << 20
	}
	if l.MaxMembers <= 0 {
		l.MaxMembers = 1_000_000
	}
	if l.MaxListedMembers <= 0 {
		l.MaxListedMembers = 4096
	}
	if l.MaxListedNameBytes <= 0 {
		l.MaxListedNameBytes = 256 << 10
	}
	if l.MaxNameBytes <= 0 {
		l.MaxNameBytes = 4096
	}
	return l
}

// Identity is the Kubernetes container a checkpoint belongs to.
type Identity struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
}

func (id Identity) String() string { return id.Namespace + "/" + id.Pod + "/" + id.Container }

// Check holds the identity to the Kubernetes name rules (internal/k8sname)
// that the object layout and the audit trail use too, so an identity
// accepted here always names an object. Anything with '/', '..', control
// characters or upper case is refused rather than escaped.
func (id Identity) Check() error {
	if err := k8sname.Namespace.Check(id.Namespace); err != nil {
		return err
	}
	if err := k8sname.Pod.Check(id.Pod); err != nil {
		return err
	}
	return k8sname.Container.Check(id.Container)
}

// Member is one tar entry. Name has any "./" prefix removed.
type Member struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Type is the tar type flag as a letter: "f" regular file, "d"
	// directory — the only types an accepted archive has (CheckHeader);
	// "l" symlink, "h" hard link and "o" other remain for readers of
	// older listings.
	Type string `json:"type"`
}

// Info is what an archive is. It goes into the vault manifest.
type Info struct {
	Identity Identity `json:"identity"`
	// Engine is "cri-o", "containerd", "libpod" or "" when unknown.
	Engine string `json:"engine"`
	// Runtime is the OCI runtime (runc, crun) from config.dump.
	Runtime       string `json:"runtime,omitempty"`
	ContainerID   string `json:"containerID"`
	ContainerName string `json:"containerName,omitempty"`
	// Image is the image name, ImageRef its digest or id.
	Image        string    `json:"image,omitempty"`
	ImageRef     string    `json:"imageRef,omitempty"`
	Created      time.Time `json:"created,omitzero"`
	Checkpointed time.Time `json:"checkpointed,omitzero"`
	// CheckpointAnnotations are spec.dump's org.criu.checkpoint.* keys.
	CheckpointAnnotations map[string]string `json:"checkpointAnnotations,omitempty"`

	// PagesBytes is the total of checkpoint/pages-*.img: the memory.
	PagesBytes int64 `json:"pagesBytes"`
	// CheckpointBytes is the total of regular files under checkpoint/.
	CheckpointBytes int64 `json:"checkpointBytes"`
	// RootfsDiffBytes is the size of rootfs-diff.tar, 0 if absent.
	RootfsDiffBytes int64 `json:"rootfsDiffBytes"`
	MemberCount     int   `json:"memberCount"`
	// Members lists the first members, up to Limits.MaxListedMembers
	// entries and Limits.MaxListedNameBytes of names.
	Members []Member `json:"members"`
	// ArchiveBytes is the offset just past the end-of-archive marker;
	// TrailingBytes counts the zero padding after it.
	ArchiveBytes  int64 `json:"archiveBytes"`
	TrailingBytes int64 `json:"trailingBytes"`
}

// Filename is what the kubelet's archive name says:
// checkpoint-<pod>_<namespace>-<container>-<RFC 3339 time>.tar.
type Filename struct {
	Pod string
	// NamespaceContainer is "<namespace>-<container>": both may contain
	// '-', so it cannot be split without the archive's own identity.
	NamespaceContainer string
	Time               time.Time
}

// ParseFilename parses a kubelet checkpoint archive name (a base name, not
// a path).
func ParseFilename(name string) (Filename, error) {
	bad := func(why string) (Filename, error) {
		return Filename{}, fmt.Errorf("file name %q is not checkpoint-<pod>_<namespace>-<container>-<RFC3339 time>.tar: %s", name, why)
	}
	rest, ok := strings.CutPrefix(name, "checkpoint-")
	if ok {
		rest, ok = strings.CutSuffix(rest, ".tar")
	}
	if !ok {
		return bad("wrong prefix or suffix")
	}
	// The time is the tail: 2026-03-13T21:43:06Z (20) or ...06+08:00 (25),
	// optionally with fractional seconds; find the 'T' of the date.
	var t time.Time
	var head string
	found := false
	for i := len(rest) - 1; i >= 0 && !found; i-- {
		if rest[i] != '-' || i+11 >= len(rest) || rest[i+11] != 'T' {
			continue
		}
		if tt, err := time.Parse(time.RFC3339, rest[i+1:]); err == nil {
			t, head, found = tt, rest[:i], true
		}
	}
	if !found {
		return bad("no RFC 3339 time before .tar")
	}
	pod, nc, ok := strings.Cut(head, "_")
	if !ok || pod == "" {
		return bad("no '_' between pod and namespace")
	}
	if err := k8sname.Pod.Check(pod); err != nil {
		return bad(err.Error())
	}
	if !splittable(nc) {
		return bad("no <namespace>-<container> of two Kubernetes names")
	}
	return Filename{Pod: pod, NamespaceContainer: nc, Time: t}, nil
}

// splittable reports whether nc is "<namespace>-<container>" for at least
// one valid namespace and container name; which one, only the archive's
// identity says.
func splittable(nc string) bool {
	if len(nc) > 2*k8sname.MaxLabel+1 {
		return false
	}
	for i := 0; i < len(nc); i++ {
		if nc[i] == '-' && k8sname.Namespace.Valid(nc[:i]) && k8sname.Container.Valid(nc[i+1:]) {
			return true
		}
	}
	return false
}

// MismatchError reports where an archive's name disagrees with the
// identity inside it. The archive is still vaulted under its inner
// identity; the disagreement is recorded.
type MismatchError struct {
	Filename Filename
	Identity Identity
	Fields   []string // "pod", "namespace-container", "time"
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("archive name (pod %q, %q, %s) disagrees with its spec.dump identity %s on %v",
		e.Filename.Pod, e.Filename.NamespaceContainer, e.Filename.Time.Format(time.RFC3339), e.Identity, e.Fields)
}

// TimeSkew is how far the name's time may be from config.dump's
// checkpointed time: the kubelet stamps the name when it asks, the runtime
// stamps the dump when CRIU finishes.
const TimeSkew = 10 * time.Minute

// CrossCheck compares an archive's identity (and its checkpointed time,
// if known) with its file name. It returns nil or a *MismatchError.
func CrossCheck(id Identity, checkpointed time.Time, fn Filename) error {
	var fields []string
	if id.Pod != fn.Pod {
		fields = append(fields, "pod")
	}
	if id.Namespace+"-"+id.Container != fn.NamespaceContainer {
		fields = append(fields, "namespace-container")
	}
	if !checkpointed.IsZero() && !fn.Time.IsZero() {
		if d := checkpointed.Sub(fn.Time); d > TimeSkew || d < -TimeSkew {
			fields = append(fields, "time")
		}
	}
	if fields == nil {
		return nil
	}
	return &MismatchError{Filename: fn, Identity: id, Fields: fields}
}
