package checkpoint

import (
	"errors"
	"io"
	"sync"
)

// feed hands each slice written to it to the parser, which reads or skips
// it in place; Write returns once the parser is done with the whole slice.
//
// It does what an io.Pipe would, with one difference that matters for
// cost: member contents (all but a few KiB of an archive) are skipped
// without being copied, and the writer and the parser meet once per
// Write rather than once per read of archive/tar's 8 KiB discard buffer.
// For a 1 GiB archive written in 1 MiB buffers that is a thousand
// hand-offs instead of about 130,000, and no copy.
type feed struct {
	slices chan []byte   // from Write
	taken  chan struct{} // to Write: the parser is done with its slice
	done   chan struct{} // closed by closeRead: the parser has stopped
	ended  chan struct{} // closed by closeWrite: no more slices

	cur     []byte // what the parser has not consumed of the current slice
	holding bool   // cur is a writer's slice, not yet acknowledged
	eof     bool

	readOnce  sync.Once
	readErr   error // why the parser stopped; set before done is closed
	writeOnce sync.Once
	wmu       sync.Mutex
	wErr      error // set by closeWrite before ended is closed
}

func newFeed() *feed {
	return &feed{slices: make(chan []byte), taken: make(chan struct{}), done: make(chan struct{}), ended: make(chan struct{})}
}

// Write blocks until the parser has read or skipped all of p, or stopped.
// An empty Write hands nothing over but, like any other, reports a parser
// that has stopped or a stream already ended, as io.Pipe does.
func (f *feed) Write(p []byte) (int, error) {
	if len(p) == 0 {
		select {
		case <-f.done:
			return 0, f.readErr
		case <-f.ended:
			return 0, io.ErrClosedPipe
		default:
			return 0, nil
		}
	}
	select {
	case f.slices <- p:
	case <-f.done:
		return 0, f.readErr
	case <-f.ended:
		return 0, io.ErrClosedPipe
	}
	select {
	case <-f.taken:
		return len(p), nil
	case <-f.done:
		// The parser stopped part way through p; it reads no more of it.
		return 0, f.readErr
	}
}

// closeWrite ends the stream: the parser sees err, or io.EOF if nil, once
// it has consumed what was written. Call it after the last Write has
// returned; the first call decides.
func (f *feed) closeWrite(err error) {
	f.writeOnce.Do(func() {
		f.wmu.Lock()
		f.wErr = err
		f.wmu.Unlock()
		close(f.ended)
	})
}

// closeRead stops the parser's side: writers blocked now or later get err.
func (f *feed) closeRead(err error) {
	f.readOnce.Do(func() {
		f.readErr = err
		close(f.done)
	})
}

// next makes cur non-empty, acknowledging the slice just finished; it
// returns io.EOF (or the writer's error) at the end of the stream.
func (f *feed) next() error {
	for len(f.cur) == 0 {
		if f.holding {
			f.holding = false
			f.taken <- struct{}{} // the writer is waiting for exactly this
		}
		if f.eof {
			return f.endErr()
		}
		select {
		case p := <-f.slices:
			f.cur, f.holding = p, true
		case <-f.ended:
			f.eof = true
			return f.endErr()
		}
	}
	return nil
}

func (f *feed) endErr() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.wErr != nil {
		return f.wErr
	}
	return io.EOF
}

// Read copies from the current slice.
func (f *feed) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := f.next(); err != nil {
		return 0, err
	}
	n := copy(p, f.cur)
	f.cur = f.cur[n:]
	if len(f.cur) == 0 && f.holding {
		// Release the writer now rather than at the next Read: the
		// parser may not read again for a while (it is done, or decoding).
		f.holding = false
		f.taken <- struct{}{}
	}
	return n, nil
}

// skip consumes up to n bytes without copying them, showing each skipped
// piece to saw (which must not keep it). It stops early only at the end of
// the stream, returning how far it got and the end's error.
func (f *feed) skip(n int64, saw func([]byte)) (int64, error) {
	var done int64
	for done < n {
		if err := f.next(); err != nil {
			return done, err
		}
		k := int(min(int64(len(f.cur)), n-done))
		saw(f.cur[:k])
		f.cur = f.cur[k:]
		done += int64(k)
	}
	if len(f.cur) == 0 && f.holding {
		f.holding = false
		f.taken <- struct{}{}
	}
	return done, nil
}

// errSeek tells archive/tar that a reader cannot seek (it then reads).
var errSeek = errors.New("checkpoint: not seekable")
