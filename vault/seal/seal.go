// Package seal turns one plaintext checkpoint stream into its age
// ciphertext in a single pass, computing on the way the SHA-256 of the
// plaintext and of the ciphertext, without writing either to local disk.
//
// The daemon reads each archive exactly once: the same bytes that are hashed
// are the bytes that are encrypted, so the digests in the manifest describe
// exactly what was uploaded, and a file that changes while it is read is
// detected (its length differs from what was declared).
//
// The work is a three-stage pipeline, so that two cores share it:
//
//	reader goroutine:    src -> plaintext buffers, SHA-256(plaintext)
//	encrypt goroutine:   age STREAM encryption into ciphertext buffers
//	hash goroutine:      SHA-256(ciphertext), then hands buffers to Read
//
// Buffers circulate through fixed pools, so memory (about 8.5 MiB) and
// allocations do not depend on the stream's size.
package seal

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
)

// Digests describe one sealed stream.
type Digests struct {
	PlaintextSHA256  [32]byte
	CiphertextSHA256 [32]byte
	PlaintextSize    int64
	CiphertextSize   int64
}

// ErrSizeMismatch is wrapped when the plaintext source yields more or fewer
// bytes than declared: the file changed or was truncated while being read.
var ErrSizeMismatch = errors.New("plaintext size differs from the declared size")

const (
	// bufSize is a multiple of the age chunk size, so plaintext buffers
	// map onto whole chunks.
	bufSize = 16 * envelope.ChunkSize // 1 MiB
	// nBufs buffers per pool: enough for each stage to work while the
	// next one drains. 4 seals as fast as 8 did (BenchmarkSeal1GiB, 2
	// cores) with half the memory, which the daemon's 64 MiB budget needs.
	nBufs = 4
)

type buffer struct {
	b []byte // len = filled
}

// Reader is the ciphertext of a plaintext stream. Hand it to an upload with
// length [Reader.Size]. It must be read to io.EOF (or closed); Digests are
// valid only after EOF.
type Reader struct {
	size int64

	ctx    context.Context
	cancel context.CancelCauseFunc

	out  chan *buffer // ciphertext, hashed, ready for Read
	free chan *buffer // ciphertext buffers to refill

	cur *buffer // being read by Read
	off int

	wg      sync.WaitGroup
	errOnce sync.Once
	err     error // first pipeline error; set before out is closed

	digests Digests
	done    bool
}

// NewReader starts sealing plaintext, which must yield exactly
// plaintextSize bytes, to the recipient set rs. The pipeline stops when ctx
// is cancelled, when Close is called, or at the first error.
func NewReader(ctx context.Context, plaintext io.Reader, plaintextSize int64, rs *envelope.RecipientSet) (*Reader, error) {
	if plaintextSize < 0 {
		return nil, fmt.Errorf("seal: negative plaintext size %d", plaintextSize)
	}
	ctSize, err := rs.CiphertextSize(plaintextSize)
	if err != nil {
		return nil, fmt.Errorf("seal: predicting ciphertext size: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	r := &Reader{
		size:   ctSize,
		ctx:    ctx,
		cancel: cancel,
		out:    make(chan *buffer, nBufs),
		free:   make(chan *buffer, nBufs),
	}
	r.digests.PlaintextSize = plaintextSize
	r.digests.CiphertextSize = ctSize
	for range nBufs {
		r.free <- &buffer{b: make([]byte, 0, 16*(envelope.ChunkSize+envelope.TagSize))}
	}

	plain := make(chan *buffer, nBufs)     // read + hashed plaintext
	plainFree := make(chan *buffer, nBufs) // empty plaintext buffers
	for range nBufs {
		plainFree <- &buffer{b: make([]byte, 0, bufSize)}
	}
	sealed := make(chan *buffer, nBufs) // encrypted, not yet hashed

	// The encryptor is created here so that a recipient error is returned
	// now, not at the first Read.
	sink := &chunkSink{r: r, next: sealed}
	enc, err := rs.Encrypt(sink)
	if err != nil {
		cancel(err)
		return nil, fmt.Errorf("seal: %w", err)
	}

	r.wg.Add(3)
	go r.readPlaintext(plaintext, plaintextSize, plain, plainFree)
	go r.encrypt(enc, sink, plain, plainFree, sealed)
	go r.hashCiphertext(sealed)
	return r, nil
}

// Size is the exact length of the ciphertext.
func (r *Reader) Size() int64 { return r.size }

// fail records the first error and stops every stage.
func (r *Reader) fail(err error) {
	r.errOnce.Do(func() { r.err = err })
	r.cancel(err)
}

func (r *Reader) readPlaintext(src io.Reader, want int64, plain, plainFree chan *buffer) {
	defer r.wg.Done()
	defer close(plain)
	h := sha256.New()
	var n int64
	for {
		var b *buffer
		select {
		case b = <-plainFree:
		case <-r.ctx.Done():
			return
		}
		// Read one byte more than declared, to notice a file that grew.
		limit := min(int64(bufSize), want-n+1)
		m, err := io.ReadFull(src, b.b[:limit])
		b.b = b.b[:m]
		n += int64(m)
		if n > want {
			r.fail(fmt.Errorf("%w: read more than the declared %d bytes (the file grew while it was sealed)", ErrSizeMismatch, want))
			return
		}
		h.Write(b.b)
		eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !eof {
			r.fail(fmt.Errorf("seal: reading plaintext at offset %d: %w", n, err))
			return
		}
		if eof && n < want {
			r.fail(fmt.Errorf("%w: plaintext ended after %d of %d bytes (the file shrank or was truncated while it was sealed)", ErrSizeMismatch, n, want))
			return
		}
		if eof {
			h.Sum(r.digests.PlaintextSHA256[:0])
		}
		select {
		case plain <- b:
		case <-r.ctx.Done():
			return
		}
		if eof {
			return
		}
	}
}

func (r *Reader) encrypt(enc io.WriteCloser, sink *chunkSink, plain, plainFree, sealed chan *buffer) {
	defer r.wg.Done()
	defer close(sealed)
	for b := range plain {
		if _, err := enc.Write(b.b); err != nil {
			r.fail(fmt.Errorf("seal: encrypting: %w", err))
			return
		}
		b.b = b.b[:0]
		plainFree <- b // never blocks: at most nBufs buffers exist
	}
	if r.ctx.Err() != nil {
		return
	}
	if err := enc.Close(); err != nil {
		r.fail(fmt.Errorf("seal: encrypting the last chunk: %w", err))
		return
	}
	if err := sink.flush(); err != nil {
		r.fail(err)
	}
}

func (r *Reader) hashCiphertext(sealed chan *buffer) {
	defer r.wg.Done()
	defer close(r.out)
	h := sha256.New()
	var n int64
	for b := range sealed {
		h.Write(b.b)
		n += int64(len(b.b))
		select {
		case r.out <- b:
		case <-r.ctx.Done():
			return
		}
	}
	if r.ctx.Err() != nil {
		return
	}
	if n != r.size {
		// The envelope guarantees exact sizes; this is a bug, not bad input.
		r.fail(fmt.Errorf("seal: produced %d ciphertext bytes, predicted %d", n, r.size))
		return
	}
	h.Sum(r.digests.CiphertextSHA256[:0])
}

// chunkSink collects the encryptor's output into ciphertext buffers and
// passes full ones to the hashing stage.
type chunkSink struct {
	r    *Reader
	next chan *buffer
	cur  *buffer
}

func (s *chunkSink) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if s.cur == nil {
			select {
			case s.cur = <-s.r.free:
			case <-s.r.ctx.Done():
				return 0, context.Cause(s.r.ctx)
			}
		}
		n := copy(s.cur.b[len(s.cur.b):cap(s.cur.b)], p)
		s.cur.b = s.cur.b[:len(s.cur.b)+n]
		p = p[n:]
		if len(s.cur.b) == cap(s.cur.b) {
			if err := s.flush(); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

func (s *chunkSink) flush() error {
	if s.cur == nil || len(s.cur.b) == 0 {
		return nil
	}
	select {
	case s.next <- s.cur:
		s.cur = nil
		return nil
	case <-s.r.ctx.Done():
		return context.Cause(s.r.ctx)
	}
}

// Read reads ciphertext. At EOF, Digests become valid. Any error (a short or
// long source, a read error, cancellation) is returned instead of EOF, and
// the ciphertext read so far must be discarded.
func (r *Reader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.b) {
		if r.cur != nil {
			r.recycle()
		}
		b, ok := <-r.out
		if !ok {
			return 0, r.finish()
		}
		r.cur, r.off = b, 0
	}
	n := copy(p, r.cur.b[r.off:])
	r.off += n
	return n, nil
}

// WriteTo writes the whole ciphertext to w, avoiding a copy per buffer. It
// returns the pipeline's error, if any, like Read.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.cur != nil && r.off < len(r.cur.b) {
			n, err := w.Write(r.cur.b[r.off:])
			total += int64(n)
			r.off += n
			if err != nil {
				r.fail(fmt.Errorf("seal: writing ciphertext: %w", err))
				return total, err
			}
		}
		if r.cur != nil {
			r.recycle()
		}
		b, ok := <-r.out
		if !ok {
			err := r.finish()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		r.cur, r.off = b, 0
	}
}

func (r *Reader) recycle() {
	r.cur.b = r.cur.b[:0]
	r.free <- r.cur // never blocks: at most nBufs buffers exist
	r.cur = nil
}

// finish is called when the pipeline's output is closed.
func (r *Reader) finish() error {
	r.wg.Wait()
	if r.err != nil {
		return r.err
	}
	if err := context.Cause(r.ctx); err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	r.done = true
	return io.EOF
}

// Digests returns the digests and sizes. ok is false until Read has returned
// io.EOF (or WriteTo has returned nil).
func (r *Reader) Digests() (d Digests, ok bool) {
	if !r.done {
		return Digests{}, false
	}
	return r.digests, true
}

// Close stops the pipeline and waits for its goroutines; call it when done,
// also after EOF. It must not be called concurrently with Read. It does not
// close the plaintext source, and waits for a Read of the source that is in
// progress to return (cancellation cannot interrupt a blocked Read).
func (r *Reader) Close() error {
	r.cancel(errors.New("seal: reader closed"))
	for b := range r.out {
		_ = b // drain so the hash stage can exit
	}
	r.wg.Wait()
	return nil
}

// Seal encrypts src (exactly size bytes) to rs and writes the age file to
// dst in one pass, returning both digests.
func Seal(ctx context.Context, dst io.Writer, src io.Reader, size int64, rs *envelope.RecipientSet) (Digests, error) {
	r, err := NewReader(ctx, src, size, rs)
	if err != nil {
		return Digests{}, err
	}
	defer r.Close()
	if _, err := r.WriteTo(dst); err != nil {
		return Digests{}, err
	}
	d, _ := r.Digests()
	return d, nil
}
