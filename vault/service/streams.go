package service

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// streamSlots is the cap on concurrent object streams, shared fairly: one
// identity holds at most a quarter of the slots (at least one), so a caller
// that opens downloads and reads them slowly — a stalled laptop or a
// hostile client, whose write deadline moves with every chunk it does
// read — cannot hold every stream and starve everyone else. The rate limit
// does not cover this: it counts requests, and a stream is one request
// that lasts.
type streamSlots struct {
	mu       sync.Mutex
	max      int
	perID    int
	used     int
	byIdent  map[string]int
	onChange func(delta float64)
}

func newStreamSlots(limit int, onChange func(float64)) *streamSlots {
	return &streamSlots{max: limit, perID: max(1, limit/4), byIdent: map[string]int{}, onChange: onChange}
}

// take reserves a slot for id. When it cannot, it answers the request (429
// when id has its share, 503 when the service is full; both with
// Retry-After) and returns nil; otherwise the returned func frees the slot.
func (s *streamSlots) take(w http.ResponseWriter, id Identity) (release func()) {
	key := id.Actor()
	s.mu.Lock()
	mine, full := s.byIdent[key], s.used >= s.max
	if mine < s.perID && !full {
		s.byIdent[key]++
		s.used++
	}
	s.mu.Unlock()
	switch {
	case mine >= s.perID:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, remote.Error{Error: fmt.Sprintf("%s is streaming %d objects already, its share of the service's %d; finish one, then retry", key, mine, s.max)})
		return nil
	case full:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, remote.Error{Error: fmt.Sprintf("the service is streaming %d objects already, its limit; retry in a moment", s.max)})
		return nil
	}
	s.onChange(1)
	return func() {
		s.mu.Lock()
		if s.byIdent[key]--; s.byIdent[key] <= 0 {
			delete(s.byIdent, key)
		}
		s.used--
		s.mu.Unlock()
		s.onChange(-1)
	}
}
