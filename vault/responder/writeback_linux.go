package responder

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackEvery is how much plaintext is written between writeback
// requests.
const writebackEvery = 8 << 20

// writebackFile starts the kernel's writeback of each block of the output
// as soon as it is written (sync_file_range SYNC_FILE_RANGE_WRITE, which
// does not wait), so the disk works while the download and decryption go
// on and the final fsync finds little left to do. Without it a multi-GiB
// fetch would first fill the page cache and then wait for all of it at
// fsync. It is only an early start: durability still comes from Sync.
type writebackFile struct {
	f       *os.File
	off     int64 // bytes written
	flushed int64 // bytes handed to writeback
}

func newWritebackFile(f *os.File) *writebackFile { return &writebackFile{f: f} }

func (w *writebackFile) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.flushed >= writebackEvery {
		// Errors are ignored: this is an optimisation, and a failing
		// disk fails the Write or the final Sync.
		_ = unix.SyncFileRange(int(w.f.Fd()), w.flushed, w.off-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.off
	}
	return n, err
}
