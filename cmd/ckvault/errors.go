package main

import (
	"context"
	"errors"
	"strings"

	"github.com/checkpoint-vault/ckvault/internal/termsafe"
)

// Exit statuses; the package documentation describes them for users.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitVerifyFail  = 3
	exitInterrupted = 130
)

// usageError is a bad command line: wrong flags, arguments or combinations.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// errVerification marks a completed check that found the object or log
// bad, as opposed to a failure to run the check at all.
var errVerification = errors.New("verification failed")

// errorLines is how an error is printed on stderr: "ckvault: " and the
// message, each further line (errors.Join) indented under it. Messages
// carry file names, member names and object keys from archives and the
// store, so every line is escaped (internal/termsafe): a name cannot add a
// line, rewrite one or hide one.
func errorLines(err error) string {
	var b strings.Builder
	for i, line := range strings.Split(err.Error(), "\n") {
		if i == 0 {
			b.WriteString("ckvault: ")
		} else {
			b.WriteString("  ")
		}
		b.WriteString(termsafe.String(line))
		b.WriteByte('\n')
	}
	return b.String()
}

// exitCode maps an error to the process exit status, in one place.
func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &u):
		return exitUsage
	case errors.Is(err, errVerification):
		return exitVerifyFail
	default:
		return exitError
	}
}
