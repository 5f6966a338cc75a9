package gc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
	"github.com/checkpoint-vault/ckvault/vault/store/s3store"
)

// benchChildEnv makes the test binary one GC run over the store it names
// (see openSpec), reporting benchResult on stdout; the parent reads the
// child's peak RSS from its rusage.
const benchChildEnv = "CKVAULT_GC_BENCH_CHILD"

type benchResult struct {
	Checkpoints, Deleted int
	Requests             int64
	Seconds              float64
	// PeakRSSKiB is the child's VmHWM: the high-water mark of its own
	// address space (rusage's maxrss would start from the parent's RSS at
	// fork).
	PeakRSSKiB int64
}

// vmHWM reads this process's peak resident set from /proc.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// benchPolicy keeps half of n checkpoints.
func benchPolicy(n int) *policy.RetentionConfig {
	return &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxCount: n / 2}, OrphanGrace: "24h"}
}

// countingTransport counts HTTP requests to the S3 server.
type countingTransport struct {
	rt http.RoundTripper
	n  atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// countingStore counts calls into a store without a network (the file
// store): each call is one request, and a version listing one per page of
// 1000, as S3 pages it.
type countingStore struct {
	Store
	n atomic.Int64
}

func (c *countingStore) Put(ctx context.Context, k string, r io.Reader, n int64, o store.PutOptions) (store.ObjectInfo, error) {
	c.n.Add(1)
	return c.Store.Put(ctx, k, r, n, o)
}
func (c *countingStore) Open(ctx context.Context, k string) (store.Object, error) {
	c.n.Add(1)
	return c.Store.Open(ctx, k)
}
func (c *countingStore) Stat(ctx context.Context, k string) (store.ObjectInfo, error) {
	c.n.Add(1)
	return c.Store.Stat(ctx, k)
}
func (c *countingStore) VersionLock(ctx context.Context, k, v string) (store.Lock, error) {
	c.n.Add(1)
	return c.Store.VersionLock(ctx, k, v)
}
func (c *countingStore) DeleteVersion(ctx context.Context, k, v string, o store.DeleteOptions) error {
	c.n.Add(1)
	return c.Store.DeleteVersion(ctx, k, v, o)
}
func (c *countingStore) ListVersions(ctx context.Context, p string, fn func(store.Version) error) error {
	var seen int64
	c.n.Add(1)
	return c.Store.ListVersions(ctx, p, func(v store.Version) error {
		if seen++; seen%1000 == 0 {
			c.n.Add(1)
		}
		return fn(v)
	})
}

func runBenchChild() int {
	spec := os.Getenv(benchChildEnv)
	var st Store
	var requests func() int64
	if dir, ok := strings.CutPrefix(spec, "file://"); ok {
		fs, err := filestore.New(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		cs := &countingStore{Store: fs}
		st, requests = cs, cs.n.Load
	} else {
		p := strings.Split(spec, "|")
		ct := &countingTransport{}
		pool, err := caPool(p[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		ct.rt = pool
		s, err := s3store.New(s3store.Config{URL: p[0], PathStyle: "path", Transport: ct,
			Credentials: credentials.NewStaticV4(p[2], p[3], "")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		st, requests = s, ct.n.Load
	}
	tk, err := signing.LoadTrustedKeys(os.Getenv(pubEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	l, err := audit.Open(os.Getenv(auditEnv), audit.Options{Node: "gc-bench"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer l.Close()
	n, _ := strconv.Atoi(os.Getenv("CKVAULT_GC_BENCH_N"))
	if n <= 0 {
		n = 10_000
	}
	opts := Options{Policy: benchPolicy(n), Trusted: tk, Audit: l, Actor: "gc-bench"}
	if p := os.Getenv("CKVAULT_GC_BENCH_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	start := time.Now()
	ctx := context.Background()
	plan, err := PlanRun(ctx, st, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	res, err := Execute(ctx, st, opts, plan)
	if err != nil || len(res.Failed) > 0 {
		fmt.Fprintln(os.Stderr, err, res.Failed)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(benchResult{Checkpoints: plan.Checkpoints, Deleted: len(res.Deleted),
		Requests: requests(), Seconds: time.Since(start).Seconds(), PeakRSSKiB: vmHWM()})
	return 0
}

// BenchmarkGC10000 vaults 10,000 checkpoints (60,000 objects), then runs
// GC in a child process with maxCount 5000, and reports the run's time,
// store requests per deleted checkpoint (HTTP requests on S3; calls on the
// file store) and the child's peak RSS. Run it with -benchtime=1x.
func BenchmarkGC10000(b *testing.B) {
	for _, be := range []backend{fileBackend(), s3Backend(testservers.MinIO)} {
		b.Run(be.name, func(b *testing.B) { benchGC(b, be) })
	}
}

func benchGC(b *testing.B, be backend) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("CKVAULT_GC_BENCH_N")); err == nil && v > 0 {
		n = v // for profiling a smaller run
	}
	k := testKeys(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st := be.new(b)
		now := time.Now()
		specs := make([]spec, n)
		for j := range specs {
			specs[j] = spec{ns: fmt.Sprintf("ns-%d", j%20), pod: fmt.Sprintf("pod-%d", j%100), ctr: "c",
				at: now.Add(-time.Duration(j) * time.Minute), seq: j + 1, size: 2048}
		}
		t0 := time.Now()
		putAll(b, st, k.signer, specs)
		b.Logf("%s: vaulted %d checkpoints in %s", be.name, n, time.Since(t0).Round(time.Millisecond))

		var spec string
		switch s := st.(type) {
		case *filestore.Store:
			spec = s.Describe()
		case *s3store.Store:
			srv := testservers.Shared(b, testservers.MinIO)
			spec = strings.TrimPrefix(s.Describe(), "s3 ") + "|" + srv.CAFile + "|" + srv.AccessKey + "|" + srv.SecretKey
		}
		dir, err := os.MkdirTemp("", "ckvault-gc-bench-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		cmd.Env = append(os.Environ(), "CKVAULT_GC_BENCH_N="+strconv.Itoa(n), benchChildEnv+"="+spec, auditEnv+"="+filepath.Join(dir, "audit.db"), pubEnv+"="+k.pubFile)
		b.StartTimer()
		out, err := cmd.Output()
		b.StopTimer()
		if err != nil {
			b.Fatalf("gc child: %v: %s", err, out)
		}
		var r benchResult
		if err := json.Unmarshal(out, &r); err != nil {
			b.Fatalf("gc child said %q: %v", out, err)
		}
		if r.Checkpoints != n || r.Deleted != n-n/2 {
			b.Fatalf("gc child saw %d checkpoints and deleted %d; want %d and %d", r.Checkpoints, r.Deleted, n, n-n/2)
		}
		b.ReportMetric(r.Seconds, "s/run")
		b.ReportMetric(float64(r.Requests)/float64(r.Deleted), "requests/deleted")
		b.ReportMetric(float64(r.PeakRSSKiB)/1024, "peak-RSS-MiB")
		b.Logf("%s: GC over %d checkpoints deleted %d in %.1fs, %d store requests (%.1f per deleted checkpoint), peak RSS %.0f MiB",
			be.name, r.Checkpoints, r.Deleted, r.Seconds, r.Requests, float64(r.Requests)/float64(r.Deleted), float64(r.PeakRSSKiB)/1024)
	}
}

// caPool makes a TLS transport trusting the PEM CA file.
func caPool(caFile string) (http.RoundTripper, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = 16
	return tr, nil
}
