package service

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// scriptedReviewer accepts tokens that start with "good" and counts the
// reviews it was asked for (the API server's side of the cache).
type scriptedReviewer struct{ reviews int }

func (r *scriptedReviewer) Review(_ context.Context, token string) (Identity, bool, string, error) {
	r.reviews++
	if len(token) >= 4 && token[:4] == "good" {
		return Identity{Kind: "token", User: token}, true, "", nil
	}
	return Identity{}, false, "invalid token", nil
}

// TestFloodKeepsCachedAcceptances: more made-up tokens than the cache holds
// (each a refusal) do not flush the acceptances of legitimate callers —
// which keep them working without a review while the API server is slow or
// down — and the cache stays bounded.
func TestFloodKeepsCachedAcceptances(t *testing.T) {
	r := &scriptedReviewer{}
	c := newTokenCache(r, time.Hour, time.Hour)
	ctx := context.Background()
	for i := range 100 {
		if _, ok, _, _ := c.Review(ctx, fmt.Sprintf("good-%d", i)); !ok {
			t.Fatalf("good-%d refused", i)
		}
	}
	for i := range maxCacheEntries + 5000 {
		c.Review(ctx, fmt.Sprintf("made-up-%d", i))
	}
	if n := c.answers.len(); n > maxCacheEntries {
		t.Errorf("%d answers cached, want at most %d", n, maxCacheEntries)
	}
	before := r.reviews
	for i := range 100 {
		if !c.seen(fmt.Sprintf("good-%d", i)) {
			t.Fatalf("good-%d was forgotten by a flood of refusals", i)
		}
		c.Review(ctx, fmt.Sprintf("good-%d", i))
	}
	if r.reviews != before {
		t.Errorf("%d reviews for tokens accepted before the flood, want 0", r.reviews-before)
	}
}

// TestAnswerCachePrunesExpiredFirst: full, the cache forgets everything
// that has expired, before any live answer.
func TestAnswerCachePrunesExpiredFirst(t *testing.T) {
	c := newAnswerCache[int, bool]()
	now := time.Now()
	for i := range maxCacheEntries {
		exp := now.Add(time.Hour)
		if i%2 == 0 {
			exp = now.Add(time.Second) // expired by the time of the next put
		}
		c.put(i, true, true, now, exp)
	}
	later := now.Add(time.Minute)
	c.put(-1, true, true, later, later.Add(time.Hour))
	if n := c.len(); n != maxCacheEntries/2+1 {
		t.Errorf("%d entries after pruning, want the %d live ones and the new one", n, maxCacheEntries/2)
	}
	for _, i := range []int{1, 3, maxCacheEntries - 1, -1} {
		if _, ok := c.get(i, later); !ok {
			t.Errorf("live entry %d forgotten", i)
		}
	}
}
