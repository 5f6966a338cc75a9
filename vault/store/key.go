package store

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxKeyLen is the longest key any store accepts, in bytes. S3 allows 1024
// bytes for the whole object name including the store's prefix, so keys are
// kept well below that.
const MaxKeyLen = 900

// ValidKey reports whether key is acceptable to every store, and why not.
// A valid key is non-empty UTF-8 of at most MaxKeyLen bytes, made of
// "/"-separated segments that are neither empty, "." nor "..", and contains
// no backslash, NUL or other control character. Such a key, joined to a
// directory, can never name anything outside it, and it means the same
// object on S3 as in a file store.
//
// Implementations call ValidKey on every key before using it; callers may
// call it early to fail before any work is done.
func ValidKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("invalid object key: empty")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("invalid object key %.40q...: longer than %d bytes", key, MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("invalid object key %q: not UTF-8", key)
	case strings.HasPrefix(key, "/"):
		return fmt.Errorf("invalid object key %q: absolute (starts with /)", key)
	}
	for _, r := range key {
		if r == '\\' {
			return fmt.Errorf("invalid object key %q: contains a backslash", key)
		}
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("invalid object key %q: contains a control character", key)
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("invalid object key %q: empty path segment", key)
		case ".", "..":
			return fmt.Errorf("invalid object key %q: %q segment", key, seg)
		}
	}
	return nil
}

// ValidPrefix reports whether prefix is acceptable as a List prefix: empty,
// or a valid key optionally followed by "/".
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("invalid list prefix %q: %w", prefix, err)
	}
	return nil
}
