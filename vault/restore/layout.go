package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// refNameAnnotation tags an entry of an OCI layout's index.json (OCI image
// spec, image-layout.md).
const refNameAnnotation = "org.opencontainers.image.ref.name"

// WriteLayout writes the image index idx (from Build) into the OCI layout
// directory dir, listed in its index.json under tag. dir is created 0700 if
// it does not exist; an existing dir must not be readable by group or
// others, since the layer blob is the checkpoint in plaintext. An existing
// layout is added to.
//
// On failure, a layer blob this call wrote is overwritten with zeros and
// removed, and so is dir if this call created it.
func WriteLayout(dir, tag string, idx v1.ImageIndex) (res Result, err error) {
	res, err = describe(idx)
	if err != nil {
		return res, err
	}
	res.Layout, res.Tag = dir, tag
	created, err := layoutDir(dir)
	if err != nil {
		return res, err
	}
	blob := filepath.Join(dir, "blobs", res.Layer.Algorithm, res.Layer.Hex)
	_, statErr := os.Lstat(blob)
	hadBlob := statErr == nil
	defer func() {
		if err == nil {
			return
		}
		if !hadBlob {
			zeroRemove(blob)
		}
		if created {
			os.RemoveAll(dir)
		}
	}()
	var lp layout.Path
	if _, serr := os.Stat(filepath.Join(dir, "index.json")); serr == nil {
		if lp, err = layout.FromPath(dir); err != nil {
			return res, fmt.Errorf("opening the OCI layout %s: %w", dir, err)
		}
	} else if lp, err = layout.Write(dir, empty.Index); err != nil {
		return res, fmt.Errorf("creating the OCI layout %s: %w", dir, err)
	}
	if err = lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
		return res, fmt.Errorf("writing the image into the OCI layout %s: %w", dir, err)
	}
	return res, nil
}

// layoutDir makes sure dir is a private directory, creating it if needed.
func layoutDir(dir string) (created bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return false, fmt.Errorf("creating the OCI layout directory: %w", err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("OCI layout directory: %w", err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("OCI layout %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return false, fmt.Errorf("OCI layout directory %s is accessible to other users (mode %v) and the image holds the checkpoint's memory in plaintext: chmod 700 it, or name a new directory", dir, fi.Mode().Perm())
	}
	return false, nil
}

// zeroRemove overwrites a file with zeros and removes it, best effort (as
// responder's temporary files are; see SECURITY.md on what overwriting
// reaches).
func zeroRemove(name string) {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err == nil {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			zero := make([]byte, 1<<20)
			for off := int64(0); off < fi.Size(); off += int64(len(zero)) {
				if _, err := f.WriteAt(zero[:min(int64(len(zero)), fi.Size()-off)], off); err != nil {
					break
				}
			}
			f.Sync()
		}
		f.Close()
	}
	os.Remove(name)
}
