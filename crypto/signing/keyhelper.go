package signing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
)

// Decrypting a cosign-encrypted key runs scrypt, whose working memory is
// 128·N·r bytes: 64 MiB for the keys `ckvault keygen` and `cosign
// generate-key-pair` write (N=2^16, r=8), 32 MiB for older cosign keys and
// 128 MiB for OWASP-strength ones. Done in the daemon, that one allocation
// sets its peak RSS for the life of the process, far above its steady state
// (the pipeline streams in bounded memory), whatever GOMEMLIMIT says: the
// limit cannot shrink a single live 64 MiB buffer, and the high-water mark
// stays even when the pages are returned afterwards.
//
// So a program that calls DecryptHelperMain decrypts in a short-lived copy
// of itself instead: the parent sends the password and the sealed key over
// a pipe, the helper runs scrypt and secretbox and writes back the PKCS#8
// DER (about 140 bytes), then exits, and the kernel takes back (and zeroes)
// its memory, scrypt's derived key and buffers with it. The key file's
// format is untouched: it stays what cosign writes and reads.

// helperArg, as the only argument, makes a program that calls
// DecryptHelperMain act as the helper. It is not a command: nothing else
// accepts it, and help never lists it.
const helperArg = "__ckvault-decrypt-signing-key"

// Bounds of the helper's pipe protocol. A cosign key's JSON envelope is
// about 400 bytes and its PKCS#8 P-256 key 138; the bounds only stop a
// runaway.
const (
	maxHelperField  = 64 << 10
	maxHelperOutput = 4 << 10
	maxHelperStderr = 4 << 10
	// helperTimeout bounds one decryption: OWASP-strength scrypt takes well
	// under a second even on a busy node.
	helperTimeout = time.Minute
)

// Exit statuses of the helper.
const (
	helperExitOK       = 0
	helperExitFailed   = 1 // protocol or internal failure
	helperExitRejected = 2 // wrong password or damaged key: the message is on stderr
)

// helperEnabled is set when this program has called DecryptHelperMain and
// can run the helper (on Linux: re-execute /proc/self/exe). Programs that
// never call it — other tools and test binaries linking this package —
// decrypt in process: re-executing a binary that does not know helperArg
// would run its main (a test binary would run all its tests).
var helperEnabled atomic.Bool

// DecryptHelperMain lets this program decrypt cosign-encrypted signing keys
// in a short-lived copy of itself, so that scrypt's working memory never
// enters its own heap. Call it first in main (and in a TestMain that wants
// the same behaviour), before anything else has run: started as the
// helper, it decrypts and exits; otherwise it returns at once, and
// LoadSigner uses the helper from then on.
func DecryptHelperMain() {
	if len(os.Args) == 2 && os.Args[1] == helperArg {
		hardenHelper()
		os.Exit(serveHelper(os.Stdin, os.Stdout, os.Stderr))
	}
	helperEnabled.Store(helperSupported)
}

// decryptSealed opens cosign's encrypted key envelope (the PEM block's
// bytes) with password and returns the PKCS#8 DER. The caller clears it.
func decryptSealed(ctx context.Context, sealed, password []byte) ([]byte, error) {
	if helperEnabled.Load() {
		return decryptInHelper(ctx, sealed, password)
	}
	der, err := encrypted.Decrypt(sealed, password)
	// scrypt's buffer is garbage now; hand its pages back instead of
	// keeping them resident for the life of the process. The high-water
	// mark is already set: only the helper avoids that.
	debug.FreeOSMemory()
	if err != nil {
		return nil, &rejectedError{msg: err.Error()}
	}
	return der, nil
}

// rejectedError is a decryption the key's own authentication refused: a
// wrong password or a damaged file (secretbox cannot tell them apart).
type rejectedError struct{ msg string }

func (e *rejectedError) Error() string { return e.msg }

// decryptInHelper runs the helper and returns the DER it writes back.
func decryptInHelper(ctx context.Context, sealed, password []byte) ([]byte, error) {
	if len(sealed) > maxHelperField || len(password) > maxHelperField {
		return nil, fmt.Errorf("encrypted key or password larger than %d bytes; a cosign key is about 500 bytes", maxHelperField)
	}
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()

	req := encodeHelperRequest(password, sealed)
	defer clear(req)
	out := &boundedBuffer{buf: make([]byte, maxHelperOutput)}
	defer clear(out.buf)
	errOut := &boundedBuffer{buf: make([]byte, maxHelperStderr)}

	cmd := helperCommand(ctx)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Stdout = out
	cmd.Stderr = errOut
	// Nothing of this process's environment is needed: no credentials or
	// settings leak into the helper, and GODEBUG or GOMEMLIMIT meant for
	// the daemon do not change how it runs.
	cmd.Env = []string{}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the key-decryption helper (%s %s): %w; ckvault decrypts a cosign-encrypted key in a short-lived copy of itself to keep scrypt's memory out of the daemon — allow it to execute its own binary, or use a KMS key or an unencrypted PKCS#8 key",
			cmd.Path, helperArg, err)
	}
	werr := cmd.Wait()
	msg := strings.TrimSpace(string(errOut.bytes()))
	var exit *exec.ExitError
	switch {
	case werr == nil && out.overflow:
		return nil, fmt.Errorf("key-decryption helper wrote more than %d bytes", maxHelperOutput)
	case werr == nil:
		return bytes.Clone(out.bytes()), nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("key-decryption helper did not finish: %w", ctx.Err())
	case errors.As(werr, &exit) && exit.ExitCode() == helperExitRejected:
		return nil, &rejectedError{msg: msg}
	case msg != "":
		return nil, fmt.Errorf("key-decryption helper failed: %v: %s", werr, msg)
	default:
		// Killed without a word: most likely by the kernel's OOM killer,
		// since scrypt needs up to 128 MiB for a moment.
		return nil, fmt.Errorf("key-decryption helper failed: %v (scrypt needs 32–128 MiB for a moment; check the memory limit)", werr)
	}
}

// serveHelper is the helper's side: read a request from in, write the
// DER to out or a message to errw, and return the exit status.
func serveHelper(in io.Reader, out, errw io.Writer) int {
	req, err := io.ReadAll(io.LimitReader(in, 2*(maxHelperField+4)+1))
	if err != nil {
		fmt.Fprintf(errw, "reading request: %v\n", err)
		return helperExitFailed
	}
	defer clear(req)
	password, sealed, err := decodeHelperRequest(req)
	if err != nil {
		fmt.Fprintf(errw, "%v\n", err)
		return helperExitFailed
	}
	der, err := encrypted.Decrypt(sealed, password)
	if err != nil {
		fmt.Fprintf(errw, "%v\n", err)
		return helperExitRejected
	}
	defer clear(der)
	if _, err := out.Write(der); err != nil {
		fmt.Fprintf(errw, "writing key: %v\n", err)
		return helperExitFailed
	}
	return helperExitOK
}

// encodeHelperRequest frames password and sealed key: each is a 4-byte
// big-endian length and the bytes.
func encodeHelperRequest(password, sealed []byte) []byte {
	b := make([]byte, 0, 8+len(password)+len(sealed))
	b = binary.BigEndian.AppendUint32(b, uint32(len(password)))
	b = append(b, password...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(sealed)))
	return append(b, sealed...)
}

// decodeHelperRequest parses what encodeHelperRequest wrote, exactly.
func decodeHelperRequest(b []byte) (password, sealed []byte, err error) {
	field := func() ([]byte, error) {
		if len(b) < 4 {
			return nil, errors.New("malformed request: truncated length")
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if n > maxHelperField || uint64(n) > uint64(len(b)) {
			return nil, fmt.Errorf("malformed request: field of %d bytes, %d left", n, len(b))
		}
		f := b[:n:n]
		b = b[n:]
		return f, nil
	}
	if password, err = field(); err != nil {
		return nil, nil, err
	}
	if sealed, err = field(); err != nil {
		return nil, nil, err
	}
	if len(b) != 0 {
		return nil, nil, fmt.Errorf("malformed request: %d trailing bytes", len(b))
	}
	return password, sealed, nil
}

// boundedBuffer collects a child's output into a fixed buffer: key
// material is never copied by a growing slice, and a runaway child cannot
// grow this process.
type boundedBuffer struct {
	buf      []byte
	n        int
	overflow bool
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	c := copy(w.buf[w.n:], p)
	w.n += c
	if c < len(p) {
		w.overflow = true
	}
	// Accept everything so the child is never blocked on a full pipe.
	return len(p), nil
}

func (w *boundedBuffer) bytes() []byte { return w.buf[:w.n] }
