package daemon

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// queue is the scheduler's backlog. Every pending name is in items; one
// that is neither running nor due waits in a heap by due time, and one
// that is due waits in a heap by age, so the oldest archive goes first.
// The loop sleeps on one timer set to the earliest due time instead of
// rescanning the backlog: its cost per event is O(log n).
type queue struct {
	items   map[string]*item
	waiting itemHeap // by due, then first
	ready   itemHeap // by first
}

func newQueue() *queue {
	return &queue{items: map[string]*item{},
		waiting: itemHeap{less: func(a, b *item) bool {
			if !a.due.Equal(b.due) {
				return a.due.Before(b.due)
			}
			return a.first.Before(b.first)
		}},
		ready: itemHeap{less: func(a, b *item) bool { return a.first.Before(b.first) }}}
}

// event notes that name may have changed: a new name is due now, a name
// being processed is looked at again when that attempt ends, and a name
// waiting to poll again (not backing off after a failure) is brought
// forward.
func (q *queue) event(name string, now time.Time) {
	it, ok := q.items[name]
	switch {
	case !ok:
		it = &item{name: name, first: now, due: now, hidx: -1}
		q.items[name] = it
		heap.Push(&q.waiting, it)
	case it.running:
		it.again = true
	case it.attempts == 0 && it.due.After(now) && it.in == &q.waiting:
		it.due = now
		heap.Fix(&q.waiting, it.hidx)
	}
}

// next returns the oldest due item, marked running, or nil.
func (q *queue) next(now time.Time) *item {
	for q.waiting.Len() > 0 && !q.waiting.items[0].due.After(now) {
		heap.Push(&q.ready, heap.Pop(&q.waiting))
	}
	if q.ready.Len() == 0 {
		return nil
	}
	it := heap.Pop(&q.ready).(*item)
	it.running = true
	return it
}

// wake is when the next item falls due (zero if none waits; now if one is
// due already).
func (q *queue) wake(now time.Time) time.Time {
	if q.ready.Len() > 0 {
		return now
	}
	if q.waiting.Len() > 0 {
		return q.waiting.items[0].due
	}
	return time.Time{}
}

// finish ends an attempt: the item is dropped (done, and no event came
// meanwhile) or waits until due again.
func (q *queue) finish(it *item, res result, retry time.Duration, now time.Time) {
	it.running = false
	switch {
	case res == resDone && !it.again:
		delete(q.items, it.name)
		return
	case res == resDone:
		it.due = now
	default:
		it.due = now.Add(retry)
	}
	it.again = false
	heap.Push(&q.waiting, it)
}

// oldest is the entry time of the longest-pending name (zero if none).
func (q *queue) oldest(failedOnly bool) time.Time {
	var t time.Time
	for _, it := range q.items {
		if failedOnly && it.attempts == 0 {
			continue
		}
		if t.IsZero() || it.first.Before(t) {
			t = it.first
		}
	}
	return t
}

// itemHeap is a container/heap of items that records each item's index
// and heap, so an item can be moved (heap.Fix) when its due time changes.
type itemHeap struct {
	items []*item
	less  func(a, b *item) bool
}

func (h *itemHeap) Len() int           { return len(h.items) }
func (h *itemHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *itemHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].hidx, h.items[j].hidx = i, j
}
func (h *itemHeap) Push(x any) {
	it := x.(*item)
	it.hidx, it.in = len(h.items), h
	h.items = append(h.items, it)
}
func (h *itemHeap) Pop() any {
	n := len(h.items) - 1
	it := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	it.hidx, it.in = -1, nil
	return it
}

// backoff is the delay before retrying after the n-th consecutive failure
// (n ≥ 1): min doubled per failure, capped at max, then "equal jitter" —
// uniform in [d/2, d] — so that archives which failed together (a store
// outage) spread their retries instead of hitting the store in lockstep.
// rnd(k) returns a uniform value in [0, k).
func backoff(n int, minD, maxD time.Duration, rnd func(int64) int64) time.Duration {
	d := maxD
	if n-1 < 62 {
		if x := minD << (n - 1); x > 0 && x>>(n-1) == minD {
			d = min(x, maxD)
		}
	}
	half := d / 2
	return half + time.Duration(rnd(int64(d-half)+1))
}

// jitter is backoff's randomness (math/rand/v2's goroutine-safe source).
func jitter(k int64) int64 { return rand.Int64N(k) }

// flight runs at most one instance of a background task (an audit export,
// a store health check) at a time, off the scheduler's loop, and lets
// close wait for the one in flight.
type flight struct {
	mu   sync.Mutex
	done chan struct{} // of the run in flight; nil when idle
}

// start runs fn in a goroutine unless an earlier one is still running,
// and reports whether it started it.
func (f *flight) start(fn func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done != nil {
		return false
	}
	done := make(chan struct{})
	f.done = done
	go func() {
		defer func() {
			f.mu.Lock()
			f.done = nil
			f.mu.Unlock()
			close(done)
		}()
		fn()
	}()
	return true
}

// busy reports whether a run is in flight.
func (f *flight) busy() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done != nil
}

// wait waits for the run in flight, if any, or until ctx ends; it reports
// whether nothing is running any more.
func (f *flight) wait(ctx context.Context) bool {
	f.mu.Lock()
	done := f.done
	f.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
