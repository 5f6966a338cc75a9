package responder

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/ctxio"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// The ciphertext is read once and flows through three goroutines so that
// two cores share the work: download + SHA-256(ciphertext), age decryption,
// SHA-256(plaintext) + the sink (a file, or the archive parser). Buffers
// circulate through fixed pools: memory does not grow with the object.
const (
	bufSize  = 1 << 20
	poolSize = 4
)

type chunk struct {
	b   []byte
	n   int
	err error
}

// hashingReader reads src ahead on its own goroutine, hashing and counting
// every byte, and hands the bytes to Read in order.
type hashingReader struct {
	full, free chan *chunk
	stop       chan struct{}
	done       chan struct{}
	cur        *chunk
	off        int
	h          hash.Hash
	n          int64 // bytes read from src; valid after EOF or Close
}

func newHashingReader(src io.Reader, progress func(int64)) *hashingReader {
	r := &hashingReader{
		full: make(chan *chunk, poolSize), free: make(chan *chunk, poolSize),
		stop: make(chan struct{}), done: make(chan struct{}), h: sha256.New(),
	}
	for range poolSize {
		r.free <- &chunk{b: make([]byte, bufSize)}
	}
	go func() {
		defer close(r.done)
		for {
			var c *chunk
			select {
			case c = <-r.free:
			case <-r.stop:
				return
			}
			n, err := io.ReadFull(src, c.b)
			r.h.Write(c.b[:n])
			r.n += int64(n)
			if progress != nil && n > 0 {
				progress(int64(n))
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			c.n, c.err = n, err
			select {
			case r.full <- c:
			case <-r.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return r
}

func (r *hashingReader) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			r.cur = <-r.full
			r.off = 0
		}
		if r.off < r.cur.n {
			n := copy(p, r.cur.b[r.off:r.cur.n])
			r.off += n
			return n, nil
		}
		if r.cur.err != nil {
			return 0, r.cur.err
		}
		r.free <- r.cur
		r.cur = nil
	}
}

// finish reads whatever is left (up to the source's end) so that the digest
// covers the whole object, then returns the digest and byte count.
func (r *hashingReader) finish() ([32]byte, int64, error) {
	_, err := io.Copy(io.Discard, r)
	r.close()
	var sum [32]byte
	r.h.Sum(sum[:0])
	return sum, r.n, err
}

func (r *hashingReader) close() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

// hashingWriter hashes and writes to dst on its own goroutine.
type hashingWriter struct {
	full, free chan *chunk
	done       chan struct{}
	h          hash.Hash
	n          int64
	mu         sync.Mutex
	err        error
	dst        io.Writer
}

func newHashingWriter(dst io.Writer) *hashingWriter {
	w := &hashingWriter{
		full: make(chan *chunk, poolSize), free: make(chan *chunk, poolSize),
		done: make(chan struct{}), h: sha256.New(), dst: dst,
	}
	for range poolSize {
		w.free <- &chunk{b: make([]byte, bufSize)}
	}
	go func() {
		defer close(w.done)
		for c := range w.full {
			if w.error() == nil {
				w.h.Write(c.b[:c.n])
				w.n += int64(c.n)
				if dst != nil {
					if _, err := dst.Write(c.b[:c.n]); err != nil {
						w.setError(err)
					}
				}
			}
			w.free <- c
		}
	}()
	return w
}

func (w *hashingWriter) error() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *hashingWriter) setError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

func (w *hashingWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if err := w.error(); err != nil {
			return total - len(p), err
		}
		c := <-w.free
		c.n = copy(c.b, p)
		p = p[c.n:]
		w.full <- c
	}
	return total, nil
}

// ReadFrom fills the pool's buffers directly, saving a copy per buffer.
func (w *hashingWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if err := w.error(); err != nil {
			return total, err
		}
		c := <-w.free
		n, err := io.ReadFull(r, c.b)
		c.n = n
		total += int64(n)
		if n > 0 {
			w.full <- c
		} else {
			w.free <- c
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// close waits for the queued bytes to reach dst and returns the digest.
func (w *hashingWriter) close() ([32]byte, int64, error) {
	close(w.full)
	<-w.done
	var sum [32]byte
	w.h.Sum(sum[:0])
	return sum, w.n, w.error()
}

// sinkError marks a failure of the sink (writing the output file, the
// archive parser) rather than of the vault's object.
type sinkError struct{ err error }

func (e *sinkError) Error() string { return e.err.Error() }
func (e *sinkError) Unwrap() error { return e.err }

// decrypt streams the ciphertext of the verified manifest m into sink as
// plaintext, checking on the way FORMAT.md steps 4 and 5. It returns nil
// only when the ciphertext and plaintext digests and sizes match m and age
// reached the authenticated end of the file. The sink sees plaintext
// before that: it must not publish or act on it until decrypt returns nil.
func (r *Responder) decrypt(ctx context.Context, m *manifest.Manifest, ids []age.Identity, sink io.Writer, progress func(int64)) error {
	base := m.Object
	obj, err := r.Store.Open(ctx, m.Objects().Ciphertext)
	if err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return &CheckError{Check: CheckCiphertext, Object: base, Err: fmt.Errorf("%s is missing: %w", m.Objects().Ciphertext, err)}
		}
		return err
	}
	defer obj.Close()
	if sz := obj.Info().Size; sz != m.Ciphertext.Size {
		// Checked before any byte is read: a truncated or extended object
		// is refused without downloading it.
		return &CheckError{Check: CheckCiphertext, Object: base, Err: fmt.Errorf("%w: %s is %d bytes in the store, the manifest says %d",
			manifest.ErrContentMismatch, m.Objects().Ciphertext, sz, m.Ciphertext.Size)}
	}
	// Read at most one byte more than the manifest's size, so an object
	// that grows while it is read is detected without reading it all.
	ct := newHashingReader(ctxio.Reader(ctx, io.LimitReader(obj, m.Ciphertext.Size+1)), progress)
	defer ct.close()

	checkCiphertext := func() error {
		sum, n, err := ct.finish()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("downloading %s: %w", m.Objects().Ciphertext, err)
		}
		if err := m.CheckCiphertext(sum, n); err != nil {
			return &CheckError{Check: CheckCiphertext, Object: base, Err: err}
		}
		return nil
	}

	pr, err := envelope.Decrypt(ct, ids...)
	if err != nil {
		var nim *age.NoIdentityMatchError
		if errors.As(err, &nim) || errors.Is(err, age.ErrIncorrectIdentity) {
			wi := &WrongIdentityError{Object: base, SealedTo: m.Recipients, Given: IdentityFingerprints(ids)}
			if wi.givenIsRecipient() {
				// A recipient's key failed: the header is likely not the
				// one signed. Prove it rather than blame the key.
				if cerr := checkCiphertext(); cerr != nil {
					return cerr
				}
			}
			return wi
		}
		// A damaged header: say whether the object differs from what was
		// signed, which is the more useful diagnosis.
		if cerr := checkCiphertext(); cerr != nil {
			return cerr
		}
		return &CheckError{Check: CheckDecryption, Object: base, Err: err}
	}
	pw := newHashingWriter(sink)
	_, copyErr := pw.ReadFrom(pr)
	psum, pn, sinkErr := pw.close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if sinkErr != nil {
		return &sinkError{sinkErr}
	}
	// The ciphertext is checked first even when decryption failed: a
	// flipped byte is best reported as "not what was signed".
	if err := checkCiphertext(); err != nil {
		return err
	}
	if copyErr != nil {
		return &CheckError{Check: CheckDecryption, Object: base, Err: copyErr}
	}
	if err := m.CheckPlaintext(psum, pn); err != nil {
		return &CheckError{Check: CheckPlaintext, Object: base, Err: err}
	}
	return nil
}

// IdentityFingerprints returns the fingerprints of the recipients of ids,
// where the identity type reveals its recipient (age X25519 and hybrid
// post-quantum keys).
func IdentityFingerprints(ids []age.Identity) []string {
	var out []string
	for _, id := range ids {
		var rc string
		switch id := id.(type) {
		case *age.X25519Identity:
			rc = id.Recipient().String()
		case *age.HybridIdentity:
			rc = id.Recipient().String()
		default:
			continue
		}
		out = append(out, envelope.Fingerprint(rc))
	}
	return out
}
