// Package ctxio makes long copies cancellable: io.Copy has no context, so
// a multi-GiB seal, store write or download would otherwise run to its end
// after the daemon or the caller has given up.
package ctxio

import (
	"context"
	"io"
)

// Reader returns a reader that fails with ctx's error at the first Read
// after ctx ends. A Read already blocked in r is not interrupted: the
// copy stops at the next buffer, which for files and network bodies is
// soon.
func Reader(ctx context.Context, r io.Reader) io.Reader {
	return &reader{ctx: ctx, r: r}
}

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c *reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
