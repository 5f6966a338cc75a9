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
	for k, a := range c.m {
		if !now.Before(a.expires) {
			delete(c.m, k)
		}
	}
	target := maxCacheEntries * 3 / 4
	for _, drop := range []func(cachedAnswer[V]) bool{
		func(a cachedAnswer[V]) bool { return !a.allowed },
		func(cachedAnswer[V]) bool { return true },
	} {
		for k, a := range c.m {
			if len(c.m) <= target {
				return
			}
			if drop(a) {
				delete(c.m, k)
			}
		}
	}
}

func (c *answerCache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
