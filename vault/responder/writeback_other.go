//go:build !linux

package responder

import "os"

// writebackFile is a plain file where sync_file_range does not exist.
type writebackFile struct{ *os.File }

func newWritebackFile(f *os.File) *writebackFile { return &writebackFile{f} }
