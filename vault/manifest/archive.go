package manifest

import (
	"slices"
	"strings"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// ArchiveOf is the manifest's archive section for an inspected checkpoint,
// the one derivation every writer uses. Files lists the non-directory
// members outside checkpoint/, sorted and unique (the first of a repeated
// name counts), at most the first 1024 of them in archive order. A name the manifest cannot carry
// (longer than 255 bytes, or with control characters) is left out of Files
// rather than making the whole manifest invalid: Files describes the
// archive, it does not vouch for it — the digests do.
func ArchiveOf(info *checkpoint.Info) Archive {
	a := Archive{Members: int64(info.MemberCount), CheckpointSize: info.CheckpointBytes,
		MemoryPagesSize: info.PagesBytes, RootfsDiffSize: info.RootfsDiffBytes, Files: []File{}}
	seen := map[string]bool{}
	for _, m := range info.Members {
		if len(a.Files) == maxFiles {
			break // the first in archive order, where the runtime's own files are
		}
		if m.Type == "d" || strings.HasPrefix(m.Name, checkpoint.CheckpointDir) || seen[m.Name] ||
			checkText("archive.files name", m.Name, 255, true) != nil {
			continue
		}
		seen[m.Name] = true
		a.Files = append(a.Files, File{Name: m.Name, Size: m.Size})
	}
	slices.SortFunc(a.Files, func(x, y File) int { return strings.Compare(x.Name, y.Name) })
	return a
}
