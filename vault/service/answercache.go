package service

import (
	"sync"
	"time"
)

// answerCache remembers the API server's answers (TokenReview,
// SubjectAccessReview) until they expire, in at most maxCacheEntries
// entries. Full, it forgets everything that has expired, then refusals, and
// only then arbitrary acceptances, down to three quarters: a flood of made-up
// tokens or never-granted callers (whose answers are refusals) costs
// reviews, not the acceptances legitimate callers depend on while the API
// server is slow or down. The quarter left free means a flood costs one
// scan per quarter of the table, not one per newcomer.
type answerCache[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]cachedAnswer[V]
}

type cachedAnswer[V any] struct {
	v       V
	allowed bool
	expires time.Time
}

func newAnswerCache[K comparable, V any]() *answerCache[K, V] {
	return &answerCache[K, V]{m: map[K]cachedAnswer[V]{}}
}

// get returns the answer for k if it has not expired at now.
func (c *answerCache[K, V]) get(k K, now time.Time) (V, bool) {
	c.mu.Lock()
	a, hit := c.m[k]
	c.mu.Unlock()
	if !hit || !now.Before(a.expires) {
		var zero V
		return zero, false
	}
	return a.v, true
}

// put remembers v, an acceptance or a refusal, until expires.
func (c *answerCache[K, V]) put(k K, v V, allowed bool, now, expires time.Time) {
	if !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= maxCacheEntries {
		c.prune(now)
	}
	c.m[k] = cachedAnswer[V]{v, allowed, expires}
}

func (c *answerCache[K, V]) prune(now time.Time) {
	expired := func(a cachedAnswer[V]) bool { return !now.Before(a.expires) }
	refusal := func(a cachedAnswer[V]) bool { return !a.allowed }
	shrink(c.m, 0, expired)
	shrink(c.m, maxCacheEntries*3/4, refusal, anyEntry)
}

// shrink deletes entries of m until it holds at most n: first those the
// first predicate picks, then those the next one picks, and so on. It is
// how every bounded table here makes room (the answer caches, the rate
// limiters): forget what costs nothing to forget before what does.
func shrink[K comparable, V any](m map[K]V, n int, picks ...func(V) bool) {
	for _, pick := range picks {
		for k, v := range m {
			if len(m) <= n {
				return
			}
			if pick(v) {
				delete(m, k)
			}
		}
	}
}

func anyEntry[V any](V) bool { return true }

func (c *answerCache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
