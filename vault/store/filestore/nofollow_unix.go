//go:build unix

package filestore

import "syscall"

// oNoFollow makes Open refuse a symlink planted where an object should be.
const oNoFollow = syscall.O_NOFOLLOW
