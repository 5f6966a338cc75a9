package checkpoint

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Inspector parses an archive from the bytes written to it. It is safe to
// use as one branch of an io.MultiWriter: Write blocks until the parser has
// consumed the bytes (through a feed, which skips member contents in
// place), and fails as soon as the parser
// has rejected the archive, so a non-tar file stops the read early.
//
// A Write never blocks for longer than parsing its own bytes takes: the
// parser's work is proportional to the bytes written (see [Parse]), so a
// writer that stops on cancellation between writes (seal's pipeline
// checks its context between buffers) is never held up by a hostile
// archive.
//
// Write must not be called concurrently; Finish must be called exactly
// once, after the last Write (also on error paths, to stop the goroutine).
type Inspector struct {
	f    *feed
	done chan struct{}
	info *Info
	err  error
}

// NewInspector starts the parsing goroutine.
func NewInspector(lim Limits) *Inspector {
	in := &Inspector{f: newFeed(), done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.info, in.err = Parse(in.f, lim)
		// Unblock a writer still writing after the parser returned: with
		// an error it sees that error; after success it sees only zero
		// padding (Parse read to EOF), so this is never reached with data
		// pending unless Parse failed.
		in.f.closeRead(errOr(in.err, errParserDone))
	}()
	return in
}

var errParserDone = errors.New("checkpoint: inspector already finished")

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// Write feeds archive bytes to the parser.
func (in *Inspector) Write(p []byte) (int, error) {
	n, err := in.f.Write(p)
	if err != nil {
		return n, fmt.Errorf("checkpoint: %w", err)
	}
	return n, nil
}

// Finish signals the end of the archive and returns what the parser found.
// The Info is only meaningful when the error is nil.
func (in *Inspector) Finish() (*Info, error) {
	in.f.closeWrite(nil)
	<-in.done
	return in.info, in.err
}

// Abort stops the parser without a verdict (the caller's read failed).
func (in *Inspector) Abort(err error) {
	in.f.closeWrite(errOr(err, errors.New("aborted")))
	<-in.done
}

// Parse reads a whole archive from r — through its end-of-archive marker
// and any padding after it, to r's EOF — and returns what it is.
//
// The work is proportional to the bytes read from r: member contents are
// skipped, not read, except the two dumps (bounded by lim.MaxDumpSize), and
// every member passes [CheckHeader], which refuses the sparse files whose
// contents would read back far larger than they are stored.
func Parse(r io.Reader, lim Limits) (*Info, error) {
	var work parseWork
	return parseInto(r, lim, &work)
}

// parseWork is what one parse did, for the tests that hold it to its
// bounds.
type parseWork struct {
	contentBytes int64 // member content read through archive/tar (the dumps)
	listedBytes  int   // of names kept in Info.Members
}

func parseInto(r io.Reader, lim Limits, work *parseWork) (*Info, error) {
	lim = lim.WithDefaults()
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	info := &Info{}
	var (
		config, spec   []byte
		sawCheckpoint  bool
		lastDataEnd    int64 // offset where the last member's data ends
		lastSize       int64
		seenConfig     bool
		seenSpec       bool
		seenRootfsDiff bool
	)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, tarError(err, cr)
		}
		info.MemberCount++
		if info.MemberCount > lim.MaxMembers {
			return nil, fmt.Errorf("%w: more than %d members", ErrTooLarge, lim.MaxMembers)
		}
		dataSize, err := CheckHeader(hdr, lim)
		if err != nil {
			return nil, err
		}
		// archive/tar has read exactly the header blocks: the data starts
		// here, and Next skips it (reading, not expanding, dataSize bytes).
		lastDataEnd, lastSize = cr.n+dataSize, dataSize
		name := cleanName(hdr.Name)
		m := Member{Name: name, Size: dataSize, Type: typeLetter(hdr.Typeflag)}
		if hdr.Typeflag == tar.TypeDir && !strings.HasSuffix(m.Name, "/") {
			m.Name += "/"
		}
		if len(info.Members) < lim.MaxListedMembers && work.listedBytes+len(m.Name) <= lim.MaxListedNameBytes {
			// A copy: a name from a PAX record is a substring of the
			// whole header (up to 1 MiB), which keeping it would retain.
			m.Name = strings.Clone(m.Name)
			info.Members = append(info.Members, m)
			work.listedBytes += len(m.Name)
		}
		regular := hdr.Typeflag == tar.TypeReg // tar.Reader reports the old TypeRegA as TypeReg
		switch {
		case m.Name == CheckpointDir && hdr.Typeflag == tar.TypeDir:
			sawCheckpoint = true
		case strings.HasPrefix(m.Name, CheckpointDir) && regular:
			sawCheckpoint = true
			info.CheckpointBytes += hdr.Size
			if strings.HasPrefix(m.Name, pagesPrefix) {
				info.PagesBytes += hdr.Size
			}
		case m.Name == ConfigDumpFile || m.Name == SpecDumpFile:
			// A second copy would let the name and the content disagree
			// between us and a tool that reads the other copy.
			if (m.Name == ConfigDumpFile && seenConfig) || (m.Name == SpecDumpFile && seenSpec) {
				return nil, fmt.Errorf("%w: %s appears twice", ErrNotCheckpoint, m.Name)
			}
			if !regular {
				return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotCheckpoint, m.Name)
			}
			if hdr.Size > lim.MaxDumpSize {
				return nil, fmt.Errorf("%w: %s is %d bytes, over the %d-byte limit", ErrTooLarge, m.Name, hdr.Size, lim.MaxDumpSize)
			}
			data, err := io.ReadAll(io.LimitReader(tr, lim.MaxDumpSize))
			work.contentBytes += int64(len(data))
			if err != nil {
				return nil, tarError(err, cr)
			}
			if m.Name == ConfigDumpFile {
				config, seenConfig = data, true
			} else {
				spec, seenSpec = data, true
			}
		case m.Name == RootfsDiffFile && regular:
			if seenRootfsDiff {
				return nil, fmt.Errorf("%w: %s appears twice", ErrNotCheckpoint, m.Name)
			}
			seenRootfsDiff = true
			info.RootfsDiffBytes = hdr.Size
		}
	}
	// archive/tar returns io.EOF for two zero blocks, but also for a
	// stream that ends at a block boundary or after one zero block. The
	// marker is there only if exactly padding + 1024 bytes were read since
	// the last member's data, and the last 1024 of them are zero.
	padded := lastDataEnd
	if info.MemberCount > 0 {
		padded += (512 - lastSize%512) % 512
	}
	if cr.n != padded+1024 || !cr.tailZero() {
		if info.MemberCount == 0 && cr.n == 0 {
			return nil, fmt.Errorf("%w: empty file", ErrNotTar)
		}
		return nil, fmt.Errorf("%w (ends at byte %d)", ErrTruncated, cr.n)
	}
	info.ArchiveBytes = cr.n

	// Whatever follows must be zero padding (tar's record blocking).
	trailing, nonZero, err := drainZeros(cr)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: reading after the end-of-archive marker: %w", err)
	}
	if nonZero >= 0 {
		return nil, fmt.Errorf("%w: non-zero byte at offset %d, %d bytes past the marker (a stale tail of an older file?)", ErrTrailingData, info.ArchiveBytes+nonZero, nonZero)
	}
	info.TrailingBytes = trailing

	if !sawCheckpoint {
		return nil, fmt.Errorf("%w: no checkpoint/ directory", ErrNotCheckpoint)
	}
	if !seenConfig {
		return nil, fmt.Errorf("%w: no %s", ErrNotCheckpoint, ConfigDumpFile)
	}
	if !seenSpec {
		return nil, fmt.Errorf("%w: no %s", ErrNotCheckpoint, SpecDumpFile)
	}
	if err := info.decodeDumps(config, spec); err != nil {
		return nil, err
	}
	return info, nil
}

// tarError classifies an error from archive/tar: the underlying reader's
// own errors pass through; the stream ending early is ErrTruncated;
// anything else archive/tar complains about is ErrNotTar.
func tarError(err error, cr *countingReader) error {
	switch {
	case cr.err != nil && errors.Is(err, cr.err):
		return fmt.Errorf("checkpoint: reading archive at byte %d: %w", cr.n, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w (ends inside a member at byte %d)", ErrTruncated, cr.n)
	default:
		return fmt.Errorf("%w: %v near byte %d", ErrNotTar, err, cr.n)
	}
}

func cleanName(n string) string {
	for strings.HasPrefix(n, "./") {
		n = n[2:]
	}
	return n
}

func typeLetter(t byte) string {
	switch t {
	case tar.TypeReg:
		return "f"
	case tar.TypeDir:
		return "d"
	case tar.TypeSymlink:
		return "l"
	case tar.TypeLink:
		return "h"
	default:
		return "o"
	}
}

// configDump mirrors checkpointctl's metadata.ContainerConfig.
type configDump struct {
	ID              string    `json:"id"`
	Name            string    `json:"name"`
	RootfsImage     string    `json:"rootfsImage"`
	RootfsImageRef  string    `json:"rootfsImageRef"`
	RootfsImageName string    `json:"rootfsImageName"`
	Runtime         string    `json:"runtime"`
	CreatedTime     time.Time `json:"createdTime"`
	CheckpointedAt  time.Time `json:"checkpointedTime"`
}

type specDump struct {
	Annotations map[string]string `json:"annotations"`
}

// Annotation keys that carry identity.
const (
	annManager        = "io.container.manager"
	annCRIOPod        = "io.kubernetes.pod.name"
	annCRIONamespace  = "io.kubernetes.pod.namespace"
	annCRIOContainer  = "io.kubernetes.container.name"
	annCRIOMetadata   = "io.kubernetes.cri-o.Metadata"
	annCRIOImage      = "io.kubernetes.cri-o.ImageName"
	annCRIPod         = "io.kubernetes.cri.sandbox-name"
	annCRINamespace   = "io.kubernetes.cri.sandbox-namespace"
	annCRIContainer   = "io.kubernetes.cri.container-name"
	annCRIImage       = "io.kubernetes.cri.image-name"
	annCRIUPrefix     = "org.criu.checkpoint."
	annCRIUEngine     = "org.criu.checkpoint.engine.name"
	annCRIUPod        = "org.criu.checkpoint.pod.name"
	annCRIUNamespace  = "org.criu.checkpoint.pod.namespace"
	annCRIUContainer  = "org.criu.checkpoint.container.name"
	annCRIUImageName  = "org.criu.checkpoint.rootfsImageName"
	annCRIURuntime    = "org.criu.checkpoint.runtime.name"
	maxAnnotationSize = 64 << 10
)

func (info *Info) decodeDumps(config, spec []byte) error {
	var c configDump
	if err := json.Unmarshal(config, &c); err != nil {
		return fmt.Errorf("%w: %s is not valid JSON: %v", ErrNotCheckpoint, ConfigDumpFile, err)
	}
	var s specDump
	if err := json.Unmarshal(spec, &s); err != nil {
		return fmt.Errorf("%w: %s is not valid JSON: %v", ErrNotCheckpoint, SpecDumpFile, err)
	}
	a := s.Annotations
	info.ContainerID = c.ID
	info.ContainerName = c.Name
	info.Image = first(c.RootfsImageName, c.RootfsImage, a[annCRIOImage], a[annCRIImage], a[annCRIUImageName])
	info.ImageRef = c.RootfsImageRef
	info.Runtime = first(c.Runtime, a[annCRIURuntime])
	info.Created = c.CreatedTime
	info.Checkpointed = c.CheckpointedAt

	switch {
	case a[annManager] == "cri-o":
		info.Engine = EngineCRIO
		info.Identity = Identity{Namespace: a[annCRIONamespace], Pod: a[annCRIOPod], Container: a[annCRIOContainer]}
		if info.Identity.Container == "" {
			var md struct{ Name string }
			if json.Unmarshal([]byte(a[annCRIOMetadata]), &md) == nil {
				info.Identity.Container = md.Name
			}
		}
	case a[annCRIPod] != "" || a[annCRINamespace] != "" || a[annCRIContainer] != "":
		info.Engine = EngineContainerd
		info.Identity = Identity{Namespace: a[annCRINamespace], Pod: a[annCRIPod], Container: a[annCRIContainer]}
	case a[annManager] == "libpod":
		info.Engine = EnginePodman
	}
	// Newer engines add org.criu.checkpoint.* keys: they fill gaps, never
	// override the engine's own annotations.
	info.Identity.Namespace = first(info.Identity.Namespace, a[annCRIUNamespace])
	info.Identity.Pod = first(info.Identity.Pod, a[annCRIUPod])
	info.Identity.Container = first(info.Identity.Container, a[annCRIUContainer])
	if info.Engine == "" {
		info.Engine = strings.ToLower(a[annCRIUEngine])
	}
	for k, v := range a {
		if strings.HasPrefix(k, annCRIUPrefix) && len(v) <= maxAnnotationSize {
			if info.CheckpointAnnotations == nil {
				info.CheckpointAnnotations = map[string]string{}
			}
			info.CheckpointAnnotations[k] = v
		}
	}
	if info.Identity.Namespace == "" || info.Identity.Pod == "" || info.Identity.Container == "" {
		return fmt.Errorf("%w: %s annotations name no Kubernetes namespace, pod and container (engine %q)", ErrNotCheckpoint, SpecDumpFile, info.Engine)
	}
	if err := info.Identity.Check(); err != nil {
		return fmt.Errorf("%w: %s annotations: %w", ErrNotCheckpoint, SpecDumpFile, err)
	}
	return nil
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// countingReader counts bytes and remembers the last 1024 of them.
type countingReader struct {
	r    io.Reader
	n    int64
	err  error      // the last error other than io.EOF
	tail [1024]byte // ring, position n%1024
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.err = err
	}
	c.note(p[:n])
	return n, err
}

// Seek(n, io.SeekCurrent) skips n bytes: archive/tar calls it to pass over
// member contents. Only an archive that comes through a feed (the
// Inspector's) is skipped in place; any other reader says it cannot seek,
// and archive/tar reads instead. Reaching the end early is not an error
// here: archive/tar's read of the last byte reports the truncation.
func (c *countingReader) Seek(offset int64, whence int) (int64, error) {
	f, ok := c.r.(*feed)
	if !ok || whence != io.SeekCurrent || offset < 0 {
		return -1, errSeek
	}
	_, err := f.skip(offset, c.note)
	if err != nil && err != io.EOF {
		c.err = err
		return c.n, err
	}
	return c.n, nil
}

// note counts b and keeps its end in the tail.
func (c *countingReader) note(b []byte) {
	if len(b) > len(c.tail) {
		c.n += int64(len(b) - len(c.tail))
		b = b[len(b)-len(c.tail):]
	}
	for len(b) > 0 {
		pos := int(c.n % int64(len(c.tail)))
		k := copy(c.tail[pos:], b)
		b = b[k:]
		c.n += int64(k)
	}
}

func (c *countingReader) tailZero() bool {
	if c.n < int64(len(c.tail)) {
		return false
	}
	for _, b := range c.tail {
		if b != 0 {
			return false
		}
	}
	return true
}

// drainZeros reads r to EOF and returns how many bytes it read and the
// offset of the first non-zero byte, or -1.
func drainZeros(r io.Reader) (n int64, nonZero int64, err error) {
	buf := make([]byte, 64<<10)
	nonZero = -1
	for {
		k, err := r.Read(buf)
		if nonZero < 0 {
			for i, b := range buf[:k] {
				if b != 0 {
					nonZero = n + int64(i)
					// Stop reading: the archive is rejected anyway.
					return n + int64(k), nonZero, nil
				}
			}
		}
		n += int64(k)
		if err == io.EOF {
			return n, nonZero, nil
		}
		if err != nil {
			return n, nonZero, err
		}
	}
}
