package trigger

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrBusy: another trigger for the same container holds its lock.
var ErrBusy = errors.New("another `ckvault checkpoint` of this container is running")

// Lock takes the lock of t in dir (created 0700): two triggers for one
// container on one machine do not race (the kubelet names an archive to the
// second, so two checkpoints in one second would get the same path, and the
// second would overwrite the first in place). It does not wait: a held lock
// is ErrBusy. The lock is the kernel's (flock / LockFileEx) and goes away
// with the process, so a crash leaves no stale lock.
func Lock(dir string, t Target) (unlock func(), err error) {
	if err := CheckTarget(t); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	// Names keep the Kubernetes rules (no '/', no '_'), so this is unique.
	name := filepath.Join(dir, t.Namespace+"_"+t.Pod+"_"+t.Container+".lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("%w (%s): wait for it to finish; two checkpoints of one container in one second would share a file name", ErrBusy, t)
		}
		return nil, fmt.Errorf("locking %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

var errWouldBlock = errors.New("lock held")
