package daemon

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/seal"
	"github.com/checkpoint-vault/ckvault/vault/shred"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// These benchmarks measure one large operation each; run them with
// -benchtime=1x. Figures are reported as custom metrics.

// dropArchive writes an archive under a dotfile name (ignored by the
// watcher) and renames it in, returning the moment it appeared whole.
func dropArchive(t testing.TB, dir string, o samplearchive.Options) (string, time.Time) {
	t.Helper()
	name := samplearchive.Filename(o)
	tmp := filepath.Join(dir, ".incoming-"+name)
	must(t, samplearchive.WriteFile(tmp, o))
	must(t, os.Rename(tmp, filepath.Join(dir, name)))
	return name, time.Now()
}

// BenchmarkEndToEnd1GiB: a 1 GiB archive from "file complete" to "local copy
// shredded" on MinIO over TLS, against uploading an already-encrypted copy
// plus shredding alone, in the same run (target: ratio <= 1.25).
func BenchmarkEndToEnd1GiB(b *testing.B) {
	srv := testservers.Shared(b, testservers.MinIO)
	for i := 0; i < b.N; i++ {
		e := s3Env(b, srv, fmt.Sprintf("bench-e2e-%d-%d", time.Now().UnixNano(), i), envOpt{})
		o := samplearchive.Options{Namespace: "bench", Pod: "big", Seed: 1, MemoryBytes: 1 << 30}
		r := startDaemon(b, e, Options{})
		b.ResetTimer()
		name, t0 := dropArchive(b, e.ckDir, o)
		p := waitVaulted(b, r, name, 10*time.Minute)
		e2e := time.Since(t0)
		b.StopTimer()
		must(b, r.stop())

		// Baseline: the same bytes encrypted beforehand, then Put + Shred.
		st := openStore(b, e)
		plainPath := filepath.Join(e.dir, "plain.tar")
		must(b, samplearchive.WriteFile(plainPath, o))
		ctPath := filepath.Join(e.dir, "ct.age")
		pf, err := os.Open(plainPath)
		must(b, err)
		fi, _ := pf.Stat()
		cf, err := os.Create(ctPath)
		must(b, err)
		rs, _, _ := r.d.recipientsFor("bench")
		_, err = seal.Seal(context.Background(), cf, pf, fi.Size(), rs)
		must(b, err)
		pf.Close()
		cf.Close()
		cf, err = os.Open(ctPath)
		must(b, err)
		cfi, _ := cf.Stat()
		t1 := time.Now()
		_, err = st.Put(context.Background(), "baseline/"+name+".age", cf, cfi.Size(), store.PutOptions{})
		must(b, err)
		upload := time.Since(t1)
		cf.Close()
		dir, err := os.Open(e.dir)
		must(b, err)
		snap, err := admit.Stat(dir, "plain.tar")
		must(b, err)
		t2 := time.Now()
		_, err = shred.Shred(dir, "plain.tar", snap, 1)
		must(b, err)
		sh := time.Since(t2)
		dir.Close()
		os.Remove(ctPath)
		b.ReportMetric(e2e.Seconds(), "e2e-s")
		b.ReportMetric(upload.Seconds(), "upload-s")
		b.ReportMetric(sh.Seconds(), "shred-s")
		b.ReportMetric(e2e.Seconds()/(upload+sh).Seconds(), "ratio")
		b.ReportMetric(float64(p.Size)/e2e.Seconds()/(1<<20), "MiB/s")
	}
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// BenchmarkPeakRSS vaults 1 GiB and 4 GiB archives in a child daemon on
// MinIO over TLS and reports its VmHWM (target <= 64 MiB, flat).
func BenchmarkPeakRSS(b *testing.B) {
	srv := testservers.Shared(b, testservers.MinIO)
	for _, key := range []string{"cosign-key", "plain-key"} {
		for _, size := range []int64{1 << 30, 4 << 30} {
			b.Run(fmt.Sprintf("%s/%dGiB", key, size>>30), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					e := s3Env(b, srv, fmt.Sprintf("bench-rss-%d", time.Now().UnixNano()), envOpt{})
					if key == "plain-key" {
						// An unencrypted PKCS#8 key (or a KMS key) skips the
						// 32 MiB scrypt of cosign's encrypted key format at start.
						writePlainSigningKey(b, e)
					}
					o := samplearchive.Options{Namespace: "bench", Pod: "rss", Seed: 2, MemoryBytes: size}
					tmp := filepath.Join(e.ckDir, ".incoming")
					must(b, samplearchive.WriteFile(tmp, o))
					cmd := startChild(b, e)
					time.Sleep(500 * time.Millisecond)
					base, _ := vmHWM(cmd.Process.Pid)
					t0 := time.Now()
					must(b, os.Rename(tmp, filepath.Join(e.ckDir, samplearchive.Filename(o))))
					for len(listTars(b, e.ckDir)) > 0 {
						time.Sleep(100 * time.Millisecond)
					}
					d := time.Since(t0)
					hwm, err := vmHWM(cmd.Process.Pid)
					must(b, err)
					cmd.Process.Signal(syscall.SIGTERM)
					cmd.Wait()
					b.ReportMetric(float64(hwm)/(1<<20), "peakRSS-MiB")
					b.ReportMetric(float64(base)/(1<<20), "idleRSS-MiB")
					b.ReportMetric(float64(size)/d.Seconds()/(1<<20), "MiB/s")
				}
			})
		}
	}
}

func writePlainSigningKey(t testing.TB, e *env) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(k)
	must(t, err)
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(e.dir, "signing.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	must(t, os.WriteFile(filepath.Join(e.dir, "signing.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644))
}

// BenchmarkCloseToAdmission: a writer holds an archive open, then closes
// it; the time to the "admitted" record (after admission, pre-scan and a
// durable state write) is measured over many archives (target p99 <= 250ms).
func BenchmarkCloseToAdmission(b *testing.B) {
	e := newEnv(b, envOpt{})
	r := startDaemon(b, e, Options{})
	const n = 60
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		for j := range n {
			o := samplearchive.Options{Namespace: "lat", Pod: fmt.Sprintf("p-%d-%d", i, j), Seed: int64(j), MemoryBytes: 256 << 10}
			name := samplearchive.Filename(o)
			f, err := os.OpenFile(filepath.Join(e.ckDir, name), os.O_RDWR|os.O_CREATE, 0o600)
			must(b, err)
			must(b, samplearchive.Write(f, o))
			time.Sleep(time.Duration(100+j%7*40) * time.Millisecond) // held open
			must(b, f.Close())
			closed := time.Now()
			waitVaulted(b, r, name, 30*time.Second)
			pg, err := r.d.Audit().Query(context.Background(), audit.Filter{Action: "admitted", Subject: name})
			must(b, err)
			if len(pg.Records) == 0 {
				b.Fatalf("no admitted record for %s", name)
			}
			lat = append(lat, pg.Records[0].Time.Sub(closed))
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))].Seconds() * 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(lat[len(lat)-1].Seconds()*1000, "max-ms")
}

// BenchmarkDrain200: 200 archives appear at once on MinIO over TLS; all must
// be vaulted; reports the time to drain.
func BenchmarkDrain200(b *testing.B) {
	srv := testservers.Shared(b, testservers.MinIO)
	for i := 0; i < b.N; i++ {
		e := s3Env(b, srv, fmt.Sprintf("bench-drain-%d", time.Now().UnixNano()), envOpt{})
		const n = 200
		var names []string
		for j := range n {
			o := samplearchive.Options{Engine: samplearchive.Engine(j % 2), Namespace: "drain", Pod: fmt.Sprintf("p-%d", j), Seed: int64(j), MemoryBytes: 256 << 10}
			name := samplearchive.Filename(o)
			must(b, samplearchive.WriteFile(filepath.Join(e.dir, name), o))
			names = append(names, name)
		}
		r := startDaemon(b, e, Options{})
		t0 := time.Now()
		for _, name := range names {
			must(b, os.Rename(filepath.Join(e.dir, name), filepath.Join(e.ckDir, name)))
		}
		for _, name := range names {
			waitVaulted(b, r, name, 10*time.Minute)
		}
		d := time.Since(t0)
		must(b, r.stop())
		if left := listTars(b, e.ckDir); len(left) > 0 {
			b.Fatalf("%d archives left", len(left))
		}
		recs := trail(b, e)
		proven := 0
		for _, rec := range recs {
			if rec.Action == "proven" {
				proven++
			}
		}
		if proven != n {
			b.Fatalf("%d proven records, want %d", proven, n)
		}
		b.ReportMetric(d.Seconds(), "drain-s")
		b.ReportMetric(float64(n)/d.Seconds(), "archives/s")
	}
}
