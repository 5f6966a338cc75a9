package daemon

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/hostiletar"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// hostileArchive is one file of the hostile set: hostile members written
// before a complete, valid checkpoint archive of its own identity.
type hostileArchive struct {
	name   string
	reason string // the rejection reason, or "" when it is vaulted
	write  func(w *bufio.Writer)
}

// hostileSet are the shapes of issue 9, at the sizes that broke the daemon:
// sparse members claiming 8 TiB of holes (a 100 % CPU hang per worker),
// 1 MB PAX and GNU names (hundreds of MiB of heap), 1 MiB PAX headers
// beside short names (which used to keep the whole header alive), tens of
// thousands of members, devices, and a header declaring a terabyte.
func hostileSet(namesPerArchive int) []hostileArchive {
	const eightTiB = 8 << 40
	tail := []byte("tail")
	one := func(b []byte) func(w *bufio.Writer) { return func(w *bufio.Writer) { w.Write(b) } }
	return []hostileArchive{
		{"checkpoint-sparse-gnu_default-app-2026-03-13T21:43:06Z.tar", "not-a-checkpoint",
			one(hostiletar.GNUSparse("checkpoint/pages-9.img", eightTiB, tail))},
		{"checkpoint-sparse-pax_default-app-2026-03-13T21:43:06Z.tar", "not-a-checkpoint",
			one(hostiletar.PAXSparse("1.0", "checkpoint/pages-9.img", eightTiB, tail))},
		{"checkpoint-pax-names_default-app-2026-03-13T21:43:06Z.tar", "not-a-checkpoint", func(w *bufio.Writer) {
			for i := range namesPerArchive {
				w.Write(hostiletar.LongPAXName(fmt.Sprintf("extra/%04d/", i), 1_000_000))
			}
		}},
		{"checkpoint-gnu-names_default-app-2026-03-13T21:43:06Z.tar", "not-a-checkpoint", func(w *bufio.Writer) {
			for i := range namesPerArchive {
				w.Write(hostiletar.LongGNUName(fmt.Sprintf("extra/%04d/", i), 1_000_000))
			}
		}},
		{"checkpoint-pax-headers_default-app-2026-03-13T21:43:06Z.tar", "", func(w *bufio.Writer) {
			comment := hostiletar.Record("comment", strings.Repeat("c", 1<<20-200))
			for i := range namesPerArchive {
				w.Write(hostiletar.PAX(hostiletar.Record("path", fmt.Sprintf("extra/%04d", i)), comment))
				w.Write(hostiletar.Raw("x", tar.TypeReg, 0, nil))
			}
		}},
		{"checkpoint-many-members_default-app-2026-03-13T21:43:06Z.tar", "", func(w *bufio.Writer) {
			for i := range 50_000 {
				w.Write(hostiletar.Raw("extra/"+strconv.Itoa(i)+strings.Repeat("m", 90), tar.TypeReg, 0, nil))
			}
		}},
		{"checkpoint-device_default-app-2026-03-13T21:43:06Z.tar", "not-a-checkpoint",
			one(hostiletar.Raw("extra/sda", tar.TypeBlock, 0, nil))},
		{"checkpoint-declares-1tib_default-app-2026-03-13T21:43:06Z.tar", "truncated",
			one(hostiletar.Raw("extra/big", tar.TypeReg, 1<<40, nil))},
	}
}

func writeHostile(t testing.TB, dir string, h hostileArchive, seed int64) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, h.name))
	must(t, err)
	w := bufio.NewWriterSize(f, 1<<20)
	h.write(w)
	w.Write(archiveBytes(t, samplearchive.Options{Seed: seed, Pod: fmt.Sprintf("hostile-%d", seed)}))
	must(t, w.Flush())
	must(t, f.Close())
}

// peakMemory samples the Go heap (live and not yet swept objects) every
// few milliseconds and reads the process's peak RSS, from a reset of the
// kernel's high-water mark.
type peakMemory struct {
	heap   atomic.Uint64 // objects, live and not yet swept
	live   atomic.Uint64 // marked live by the last GC
	stop   chan struct{}
	done   chan struct{}
	hwmErr error
}

func watchMemory() *peakMemory {
	p := &peakMemory{stop: make(chan struct{}), done: make(chan struct{})}
	runtime.GC()
	// "5" resets VmHWM to the current RSS (Linux 4.0+).
	p.hwmErr = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			rtmetrics.Read(s)
			if v := s[0].Value.Uint64(); v > p.heap.Load() {
				p.heap.Store(v)
			}
			if v := s[1].Value.Uint64(); v > p.live.Load() {
				p.live.Store(v)
			}
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// finish stops sampling and returns the peak live heap, the peak heap
// (with garbage not yet collected: it follows GOGC) and the peak RSS in
// MiB (RSS -1 when the kernel's high-water mark cannot be read or reset).
func (p *peakMemory) finish() (liveMiB, heapMiB, rssMiB float64) {
	close(p.stop)
	<-p.done
	rssMiB = -1
	if b, err := os.ReadFile("/proc/self/status"); err == nil && p.hwmErr == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				rssMiB = kb / 1024
			}
		}
	}
	return float64(p.live.Load()) / (1 << 20), float64(p.heap.Load()) / (1 << 20), rssMiB
}

// stopWithin stops the daemon (SIGTERM's path: its context is cancelled)
// and fails the test if it does not return within limit. A daemon that
// cannot stop is stuck for good: the test binary is ended, as a kubelet
// would end the pod.
func stopWithin(t *testing.T, r *running, limit time.Duration) {
	t.Helper()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- r.stop() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("daemon stop: %v", err)
		}
		t.Logf("the daemon stopped %v after its context was cancelled", time.Since(start).Round(time.Millisecond))
	case <-time.After(limit):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		panic(fmt.Sprintf("the daemon did not stop within %v of its context being cancelled (drain timeout included); goroutines:\n%s", limit, buf))
	}
}

// TestHostileArchives (DESIGN.md: "No hostile archive stalls or bloats the
// daemon"): the hostile set is refused or vaulted, the daemon's heap stays
// bounded while it reads them, a good archive dropped after them is
// vaulted, and a stop with hostile archives in flight ends within the
// drain timeout.
func TestHostileArchives(t *testing.T) {
	if testing.Short() {
		t.Skip("writes about 200 MB of hostile archives")
	}
	const namesPerArchive = 64 // 64 MB of names per archive
	e := newEnv(t, envOpt{})
	set := hostileSet(namesPerArchive)
	// Written aside and renamed in, so that the test's own writing is not
	// measured; the daemon starts first, so that its start (which decrypts
	// the signing key: 64 MiB of scrypt) is not measured either.
	staging := filepath.Join(e.dir, "staging")
	must(t, os.Mkdir(staging, 0o700))
	for i, h := range set {
		writeHostile(t, staging, h, int64(100+i))
	}
	const drain = 5 * time.Second
	r := startDaemon(t, e, Options{DrainTimeout: drain})
	if os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(DefaultMemoryLimit)) // as cmd/ckvault does
	}
	mem := watchMemory()
	for _, h := range set {
		must(t, os.Rename(filepath.Join(staging, h.name), filepath.Join(e.ckDir, h.name)))
	}

	good := samplearchive.Options{Seed: 7, Namespace: "team-a", Pod: "after-the-storm", Container: "app"}
	goodName := samplearchive.Filename(good)
	plain := archiveBytes(t, good)
	must(t, os.WriteFile(filepath.Join(e.ckDir, goodName), plain, 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	p, err := r.d.WaitVaulted(ctx, goodName)
	cancel()
	if err != nil {
		t.Errorf("a good archive dropped after the hostile ones was not vaulted: %v", err)
		stopWithin(t, r, drain+30*time.Second)
		t.FailNow()
	}
	checkVaulted(t, e, openStore(t, e), p, plain)

	for _, h := range set {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		_, err := r.d.WaitVaulted(ctx, h.name)
		cancel()
		if rejected := errors.Is(err, ErrRejected); rejected != (h.reason != "") || (!rejected && err != nil) {
			t.Errorf("%s: %v, want reason %q", h.name, err, h.reason)
		}
	}
	liveMiB, heapMiB, rssMiB := mem.finish()
	t.Logf("while the daemon read %d hostile archives (%d × 1 MB names or 1 MiB PAX headers each where applicable): peak live heap %.1f MiB, peak heap with garbage %.1f MiB, peak RSS of the test process %.1f MiB",
		len(set), namesPerArchive, liveMiB, heapMiB, rssMiB)
	// The names alone are 64 MB per archive; what the daemon may keep is
	// two workers' sealing buffers plus a header or two in flight each,
	// well under the soft memory limit (above it, the collector thrashes).
	if liveMiB > DefaultMemoryLimit>>20 {
		t.Errorf("peak live heap %.1f MiB: reading hostile archives bloats the daemon", liveMiB)
	}

	// A stop while hostile archives are being read still ends within the
	// drain timeout.
	for i, h := range set[:2] {
		h.name = strings.Replace(h.name, "checkpoint-", "checkpoint-again-", 1)
		writeHostile(t, e.ckDir, h, int64(200+i))
	}
	time.Sleep(200 * time.Millisecond) // let the workers pick them up
	stopWithin(t, r, drain+30*time.Second)

	recs := trail(t, e)
	for _, h := range set {
		if h.reason == "" {
			continue
		}
		found := false
		for _, rec := range recs {
			if rec.Subject == h.name && rec.Action == "rejected" {
				found = true
				if rec.Detail["reason"] != h.reason {
					t.Errorf("%s: reason %q (%s), want %q", h.name, rec.Detail["reason"], rec.Detail["error"], h.reason)
				}
				if len(rec.Detail["error"]) > 1024 {
					t.Errorf("%s: a %d-byte error in the audit record", h.name, len(rec.Detail["error"]))
				}
				t.Logf("%s: rejected, %s: %s", h.name, rec.Detail["reason"], rec.Detail["error"])
			}
		}
		if !found {
			t.Errorf("%s: no rejected record", h.name)
		}
	}
}

// BenchmarkHostilePeakRSS runs a child daemon (the production process:
// soft memory limit, SIGTERM handling; a plain signing key, so that the
// cosign key's scrypt at start is not what is measured) on the hostile set
// with 64 × 1 MB names per archive, then a good archive, and reports the
// daemon's peak RSS from the moment it was idle, and how long it took to
// exit after SIGTERM with two 8 TiB sparse archives just dropped.
func BenchmarkHostilePeakRSS(b *testing.B) {
	for i := 0; i < b.N; i++ {
		e := newEnv(b, envOpt{})
		writePlainSigningKey(b, e)
		set := hostileSet(64)
		staging := filepath.Join(e.dir, "staging")
		must(b, os.Mkdir(staging, 0o700))
		for j, h := range set {
			writeHostile(b, staging, h, int64(300+j))
		}
		good := samplearchive.Options{Seed: 9, Namespace: "team-a", Pod: "after-the-storm", Container: "app"}
		must(b, samplearchive.WriteFile(filepath.Join(staging, samplearchive.Filename(good)), good))

		cmd := startChild(b, e)
		time.Sleep(time.Second)
		must(b, os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", cmd.Process.Pid), []byte("5"), 0))
		idle, err := vmHWM(cmd.Process.Pid)
		must(b, err)
		t0 := time.Now()
		for _, h := range set {
			must(b, os.Rename(filepath.Join(staging, h.name), filepath.Join(e.ckDir, h.name)))
		}
		must(b, os.Rename(filepath.Join(staging, samplearchive.Filename(good)), filepath.Join(e.ckDir, samplearchive.Filename(good))))
		// Vaulted archives leave the directory; the rejected ones stay.
		want := 1
		for _, h := range set {
			if h.reason != "" {
				want++
			}
		}
		for len(listTars(b, e.ckDir)) > want-1 && time.Since(t0) < 5*time.Minute {
			time.Sleep(50 * time.Millisecond)
		}
		all := time.Since(t0)
		hwm, err := vmHWM(cmd.Process.Pid)
		must(b, err)

		for j, h := range set[:2] {
			h.name = strings.Replace(h.name, "checkpoint-", "checkpoint-again-", 1)
			writeHostile(b, e.ckDir, h, int64(400+j))
		}
		t1 := time.Now()
		must(b, cmd.Process.Signal(syscall.SIGTERM))
		if err := cmd.Wait(); err != nil {
			b.Errorf("daemon exit: %v", err)
		}
		stop := time.Since(t1)
		if n := len(listTars(b, e.ckDir)); n != want-1+2 {
			b.Errorf("%d archives left in the directory, want the %d rejected ones", n, want-1+2)
		}
		b.ReportMetric(float64(hwm)/(1<<20), "peakRSS-MiB")
		b.ReportMetric(float64(idle)/(1<<20), "idleRSS-MiB")
		b.ReportMetric(all.Seconds(), "all-s")
		b.ReportMetric(float64(stop.Milliseconds()), "sigterm-exit-ms")
	}
}
