// Package restore turns a verified checkpoint archive into an OCI
// checkpoint image: the form in which Kubernetes runtimes restore a
// container from a checkpoint (`ckvault restore`).
//
// # The image
//
// An image index (application/vnd.oci.image.index.v1+json) with one image
// manifest for one platform (default linux/amd64: a checkpoint restores only
// on the architecture it was taken on). The manifest has one layer, and the
// layer is the archive itself, uncompressed
// (application/vnd.oci.image.layer.v1.tar): unpacked at `/`, it yields
// exactly the archive's members, which is what `buildah add IMAGE
// archive.tar /` — and so `checkpointctl build` — produces. Because the
// layer is the archive byte for byte, its digest and diff id are the
// archive's SHA-256 from the signed vault manifest, and the registry checks
// every uploaded byte against it.
//
// Both the index and the manifest carry the annotations runtimes look for
// (see Annotations): CRI-O recognises a checkpoint image by
// io.kubernetes.cri-o.annotations.checkpoint.name on the manifest;
// containerd up to 2.3 by org.criu.checkpoint.container.name on what the
// image reference resolves to (the index). containerd 2.4 removed restore
// through CreateContainer (KEP-5823's RestorePod replaces it).
//
// # What it holds
//
// The image is the checkpoint in plaintext: every memory page of every
// process of the container. Push it only to a private registry, over TLS
// (Push refuses plain HTTP unless told otherwise), and delete it when the
// analysis is done.
package restore

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// Annotation keys. The org.criu.checkpoint.* names are checkpointctl's
// (lib/annotations.go), which containerd and CRI-O import; the CRI-O key
// is internal/annotations/checkpoint.go of CRI-O.
const (
	AnnotationCRIOName        = "io.kubernetes.cri-o.annotations.checkpoint.name"
	AnnotationName            = "org.criu.checkpoint.container.name"
	AnnotationPod             = "org.criu.checkpoint.pod.name"
	AnnotationNamespace       = "org.criu.checkpoint.pod.namespace"
	AnnotationEngine          = "org.criu.checkpoint.engine.name"
	AnnotationRuntime         = "org.criu.checkpoint.runtime.name"
	AnnotationRootfsImageName = "org.criu.checkpoint.rootfsImageName"
	AnnotationRootfsImageID   = "org.criu.checkpoint.rootfsImageID"
	// AnnotationVaultObject names the vault object the image was built
	// from, so an image found in a registry leads back to its signed
	// manifest and audit trail.
	AnnotationVaultObject = "dev.ckvault.object"
)

// Annotations are the annotations of the checkpoint image of the checkpoint
// m describes, for both the index and the manifest. Keys whose value the
// archive did not record (runtime, image) are left out rather than set
// empty.
func Annotations(m *manifest.Manifest) map[string]string {
	a := map[string]string{
		AnnotationCRIOName:    m.Container,
		AnnotationName:        m.Container,
		AnnotationPod:         m.Pod,
		AnnotationNamespace:   m.Namespace,
		AnnotationEngine:      m.Checkpoint.Engine,
		AnnotationVaultObject: m.Object,
	}
	for k, v := range map[string]string{
		AnnotationRuntime:         m.Checkpoint.Runtime,
		AnnotationRootfsImageName: m.Checkpoint.Image,
		AnnotationRootfsImageID:   m.Checkpoint.ImageRef,
	} {
		if v != "" {
			a[k] = v
		}
	}
	return a
}

// DefaultPlatform is the platform of the image when none is given.
var DefaultPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Build makes the checkpoint image of the archive m describes. archive must
// hold the archive's m.Plaintext.Size bytes, already verified against
// m.Plaintext; Build itself reads nothing (the digests come from m), and
// every later read of the layer is checked again against them (see
// Layer). platform zero means DefaultPlatform.
func Build(m *manifest.Manifest, archive io.ReaderAt, platform v1.Platform) (v1.ImageIndex, error) {
	if platform.OS == "" || platform.Architecture == "" {
		platform = DefaultPlatform
	}
	layer, err := Layer(archive, m.Plaintext)
	if err != nil {
		return nil, err
	}
	// The image's creation time is the checkpoint's: the same vault object
	// always yields the same image digest.
	created := v1.Time{Time: m.CheckpointedAt.Time.UTC().Truncate(time.Second)}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: platform.Architecture,
		OS:           platform.OS,
		Variant:      platform.Variant,
		Created:      created,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("building the image config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   created,
			CreatedBy: "ckvault restore",
			Comment:   "checkpoint archive " + m.Object,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("adding the archive layer: %w", err)
	}
	ann := Annotations(m)
	img = mutate.Annotations(img, ann).(v1.Image)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
		Add:        img,
		Descriptor: v1.Descriptor{Platform: &platform},
	})
	return mutate.Annotations(idx, ann).(v1.ImageIndex), nil
}

// ErrUnsafeMember: the archive has a member a runtime should not be asked
// to unpack at `/` of an image.
var ErrUnsafeMember = errors.New("archive member unsafe to unpack as an image layer")

// CheckMembers reads the tar headers of an archive (skipping the data when
// r can seek) and refuses what does not belong in a checkpoint image layer:
// a name that is absolute or climbs out with "..", and any member that is
// not a regular file or a directory (links, devices, FIFOs). Runtimes write
// checkpoint archives with regular files and directories only; runtimes
// unpack layers defensively too, but an image is the wrong place to find out.
//
// The archive is untrusted input here only in the sense that it came from a
// node; it has been verified to be the one the node vaulted.
func CheckMembers(r io.Reader) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive's member %d: %w", n, err)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir:
		case tar.TypeXGlobalHeader:
			continue
		default:
			return fmt.Errorf("%w: %q is of tar type %q, not a regular file or directory", ErrUnsafeMember, clean(hdr.Name), hdr.Typeflag)
		}
		if !localName(hdr.Name) {
			return fmt.Errorf("%w: %q is not a relative path inside the archive", ErrUnsafeMember, clean(hdr.Name))
		}
	}
}

// localName reports whether a tar member name stays below the directory it
// is unpacked into. "./" and "." (the root entry some writers emit) do.
func localName(name string) bool {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, '\\') || strings.ContainsRune(name, 0) {
		return false
	}
	for _, el := range strings.Split(path.Clean(name), "/") {
		if el == ".." {
			return false
		}
	}
	return true
}

// clean bounds a member name's length for an error message; %q escapes
// its control characters.
func clean(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
