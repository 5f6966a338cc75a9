//go:build !unix

package filestore

// oNoFollow: Windows has no O_NOFOLLOW; Stat (Lstat) before Open already
// refuses a symlinked object there, with a window a local attacker could
// race. The file store is for development; production uses S3.
const oNoFollow = 0
