package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

func TestQueueOrder(t *testing.T) {
	q := newQueue()
	t0 := time.Unix(1000, 0)
	q.event("a", t0)
	q.event("b", t0.Add(time.Second))
	q.event("c", t0.Add(2*time.Second))
	// All due: oldest first.
	now := t0.Add(3 * time.Second)
	var got []string
	for it := q.next(now); it != nil; it = q.next(now) {
		got = append(got, it.name)
	}
	if fmt.Sprint(got) != "[a b c]" {
		t.Fatalf("order %v, want [a b c]", got)
	}
	a, b, c := q.items["a"], q.items["b"], q.items["c"]
	// a polls in 100ms, b backs off 5s, c is done.
	q.finish(a, resPoll, 100*time.Millisecond, now)
	b.attempts = 1
	q.finish(b, resBackoff, 5*time.Second, now)
	q.finish(c, resDone, 0, now)
	if _, ok := q.items["c"]; ok {
		t.Error("a finished item stays in the backlog")
	}
	if w := q.wake(now); !w.Equal(now.Add(100 * time.Millisecond)) {
		t.Errorf("wake %v, want the poll in 100ms", w.Sub(now))
	}
	if it := q.next(now); it != nil {
		t.Errorf("%s handed out before it is due", it.name)
	}
	// An event brings a poll forward, not a backoff.
	q.event("a", now)
	q.event("b", now)
	if it := q.next(now); it == nil || it.name != "a" {
		t.Fatalf("next after event: %v, want a", it)
	}
	if it := q.next(now); it != nil {
		t.Fatalf("%s handed out during its backoff", it.name)
	}
	// An event while running: looked at again right after.
	q.event("a", now)
	q.finish(a, resDone, 0, now)
	if it := q.next(now); it == nil || it.name != "a" {
		t.Fatal("an event during an attempt was lost")
	}
	q.finish(a, resDone, 0, now)
	if it := q.next(now.Add(5 * time.Second)); it == nil || it.name != "b" {
		t.Fatal("b not due after its backoff")
	}
}

// TestQueueHeapRandom checks the heaps against a sorted reference on
// random operations.
func TestQueueHeapRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	q := newQueue()
	t0 := time.Unix(5000, 0)
	for i := range 500 {
		q.event(fmt.Sprintf("n%03d", i), t0.Add(time.Duration(rng.IntN(1000))*time.Millisecond))
	}
	now := t0.Add(2 * time.Second)
	var running []*item
	for it := q.next(now); it != nil; it = q.next(now) {
		running = append(running, it)
	}
	for i := 1; i < len(running); i++ {
		if running[i].first.Before(running[i-1].first) {
			t.Fatal("due items not handed out oldest first")
		}
	}
	for _, it := range running {
		q.finish(it, resPoll, time.Duration(rng.IntN(10000))*time.Millisecond, now)
	}
	last := time.Time{}
	for step := now; ; {
		w := q.wake(step)
		if w.IsZero() {
			break
		}
		it := q.next(w)
		if it == nil {
			t.Fatalf("nothing due at the wake time %v", w)
		}
		if it.due.Before(last) {
			t.Fatal("items fell due out of order")
		}
		last = it.due
		q.finish(it, resDone, 0, w)
		step = w
	}
	if len(q.items) != 0 {
		t.Errorf("%d items left", len(q.items))
	}
}

func TestBackoffJitter(t *testing.T) {
	minD, maxD := 100*time.Millisecond, 10*time.Second
	for n := 1; n <= 80; n++ {
		want := maxD
		if n <= 20 {
			want = min(minD<<(n-1), maxD)
		}
		lo, hi := want, time.Duration(0)
		for range 2000 {
			d := backoff(n, minD, maxD, jitter)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: %v outside [%v, %v]", n, d, want/2, want)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Spread: retries of archives that failed together do not line up.
		if hi-lo < want/4 {
			t.Errorf("attempt %d: delays span only %v..%v", n, lo, hi)
		}
	}
	// The bounds are reached.
	if d := backoff(3, minD, maxD, func(int64) int64 { return 0 }); d != 200*time.Millisecond {
		t.Errorf("lowest jitter %v", d)
	}
	if d := backoff(3, minD, maxD, func(k int64) int64 { return k - 1 }); d != 400*time.Millisecond {
		t.Errorf("highest jitter %v", d)
	}
}

func TestFlightSingle(t *testing.T) {
	var f flight
	release := make(chan struct{})
	var mu sync.Mutex
	runs, concurrent, peak := 0, 0, 0
	fn := func() {
		mu.Lock()
		runs++
		concurrent++
		peak = max(peak, concurrent)
		mu.Unlock()
		<-release
		mu.Lock()
		concurrent--
		mu.Unlock()
	}
	if !f.start(fn) {
		t.Fatal("first start refused")
	}
	for range 5 {
		if f.start(fn) {
			t.Fatal("a second run started while one is in flight")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if f.wait(ctx) {
		t.Fatal("wait returned while the run is in flight")
	}
	close(release)
	if !f.wait(context.Background()) || f.busy() {
		t.Fatal("wait did not wait for the run")
	}
	if runs != 1 || peak != 1 {
		t.Fatalf("%d runs, %d at once", runs, peak)
	}
	if !f.start(func() {}) {
		t.Fatal("no new run after the first ended")
	}
	f.wait(context.Background())
}

// hangingTLS is a TCP listener that accepts connections and never answers:
// a TLS client's handshake waits forever (a network fault, not a mock).
func hangingTLS(t *testing.T, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was just released; take it again
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	must(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
}

// TestStoreHangDoesNotBlockScheduler: the store stops answering (its
// health check and audit export hang in the TLS handshake). Archives that
// need no store — here, files that are not checkpoints and are rejected —
// are still handled at once, the health check and the export each run one
// at a time, and the daemon stops without waiting for them.
func TestStoreHangDoesNotBlockScheduler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := ln.Addr().String()
	ln.Close() // refused at start-up (a quick error), hanging afterwards

	dir := t.TempDir()
	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	must(t, os.WriteFile(ak, []byte("ckvault-test\n"), 0o600))
	must(t, os.WriteFile(sk, []byte("ckvault-test-secret\n"), 0o600))
	e := newEnv(t, envOpt{storeYAML: fmt.Sprintf("store:\n  url: https://%s/bucket/hang\n  pathStyle: path\n  accessKeyFile: %s\n  secretKeyFile: %s\n", addr, ak, sk)})
	e.cfg.Audit.ExportInterval = "1s"
	r := startDaemon(t, e, Options{HealthInterval: 50 * time.Millisecond, HealthTimeout: time.Minute, DrainTimeout: 2 * time.Second})
	hangingTLS(t, addr)

	// Let a health check and an export start and hang.
	deadline := time.Now().Add(20 * time.Second)
	for !(r.d.health.busy() && r.d.exports.busy()) {
		if time.Now().After(deadline) {
			t.Fatalf("health check busy %v, export busy %v: never both in flight", r.d.health.busy(), r.d.exports.busy())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 3 {
		name := fmt.Sprintf("checkpoint-junk%d_default-app-2026-03-13T21:43:06Z.tar", i)
		must(t, os.WriteFile(filepath.Join(e.ckDir, name), []byte("not a tar at all"), 0o600))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := r.d.WaitVaulted(ctx, name)
		cancel()
		if !errors.Is(err, ErrRejected) {
			t.Fatalf("%s: %v; want it rejected while the store hangs", name, err)
		}
	}
	if !r.d.health.busy() {
		t.Error("the health check returned before its timeout: the test did not exercise a hang")
	}
	// A real archive: its upload hangs in the handshake, so the stop
	// has an archive in flight as well as the export.
	p, err := samplearchive.WriteDir(e.ckDir, samplearchive.Options{Pod: "inflight", Seed: 5})
	must(t, err)
	deadline = time.Now().Add(20 * time.Second)
	for !sealing(t, r, filepath.Base(p)) {
		if time.Now().After(deadline) {
			t.Fatal("the archive's upload never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	must(t, r.stop())
	took := time.Since(start)
	if r.d.exports.busy() {
		t.Error("Run returned while an audit export was still running")
	}
	// The drain timeout bounds the whole stop: the export is cancelled at
	// the same deadline as the archive, not after a second grace period.
	if took > 2*time.Second+1500*time.Millisecond {
		t.Errorf("stop took %v with a %v drain timeout", took, 2*time.Second)
	}
	if _, err := os.Lstat(p); err != nil {
		t.Errorf("the archive in flight is gone: %v", err)
	}
	t.Logf("stopped in %v with the store hanging and an upload in flight", took.Round(time.Millisecond))
}

// BenchmarkQueueBacklog10k: one dispatch cycle (an event, the next due
// item, its finish with a poll delay) with 10,000 names waiting. The old
// scheduler rescanned and sorted the whole backlog every 25 ms; this is
// O(log n) per operation.
func BenchmarkQueueBacklog10k(b *testing.B) {
	q := newQueue()
	t0 := time.Unix(0, 0)
	for i := range 10000 {
		q.event(fmt.Sprintf("n%05d", i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	now := t0.Add(time.Hour)
	i := 0
	for b.Loop() {
		it := q.next(now)
		q.event(fmt.Sprintf("n%05d", i%10000), now)
		q.finish(it, resPoll, time.Duration(i%1000)*time.Millisecond, now)
		now = now.Add(time.Millisecond)
		i++
	}
}

// sealing reports whether the archive called name is being sealed.
func sealing(t *testing.T, r *running, name string) bool {
	st, err := r.d.Status()
	must(t, err)
	for _, a := range st.Archives {
		if a.Name == name && a.Stage == StageSealing {
			return true
		}
	}
	return false
}
