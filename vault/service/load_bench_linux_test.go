package service

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// Load benchmark parameters (issue 10, "How it must be shown").
const (
	loadCheckpoints = 10_000 // indexed checkpoints
	loadNamespaces  = 100    // so a namespace holds 100 of them
	loadClients     = 200    // concurrent clients, each its own certificate
	loadOpsEach     = 20     // requests per client
	loadFetchSet    = 8      // real checkpoints with a ciphertext, fetched
	loadFetchBytes  = 4 << 20
	loadStreams     = 4 // concurrent streams in the throughput comparison
	loadRounds      = 3 // of direct, then service
)

// BenchmarkServiceLoad runs the real `ckvault serve` binary (a child
// process, as users run it) against MinIO over TLS, with 10,000 indexed
// checkpoints, and loads it with 200 concurrent mTLS clients (each its own
// certificate, so each its own rate limit) mixing list (one namespace, 100
// entries), get (one checkpoint's manifest and signatures) and fetch (a
// whole ~4 MiB ciphertext). Run with -benchtime=1x.
//
// The store holds 10,000 checkpoints, each with a real signed manifest:
// loadFetchSet vaulted the way the daemon does (testvault.Put: sealed
// archive, ciphertext, every signature, manifest), and the rest as a
// manifest and its signature only (a valid manifest of a 4 MiB archive
// whose ciphertext was never uploaded: 2 objects instead of 6, so seeding
// takes minutes, not an hour, on the shared machine; their index entries
// are smaller than real ones by the three signature objects they lack).
// The service indexes all of them itself at start, reading and verifying
// every manifest.
//
// Reported: errors (must be 0); audit records in the service's trail
// against requests made (intent and outcome for each, counted after the
// service stopped; "lost" must be 0); p50/p99 of list and get under load;
// fetch throughput under load; then, without other load, fetch throughput
// through the service (the real client, vault/remote) against straight
// from MinIO (the store client the service itself uses), the same objects
// with the same concurrency, alternating direct and service loadRounds
// times; the service's CPU per byte served; and its peak RSS (VmHWM).
func BenchmarkServiceLoad(b *testing.B) {
	srv := testservers.Shared(b, testservers.MinIO)
	bin := buildCkvault(b)
	for i := 0; i < b.N; i++ {
		runServiceLoad(b, srv, bin)
	}
}

// loadShape is what seedLoadVault puts in the store: fetchSet real
// checkpoints of fetchBytes of memory each, and signed manifests (without
// ciphertext) up to total.
type loadShape struct {
	total, fetchSet int
	fetchBytes      int64
}

// loadFixture is the vault and configuration of one load run.
type loadFixture struct {
	dir, stateDir, cfgPath string
	st                     store.Store
	ca                     *testservers.CA
	bases                  []string                 // every checkpoint's base key
	fetch                  map[string]string        // ciphertext key -> its SHA-256
	perNS                  map[string]int           // namespace -> checkpoints
	clients                []*http.Client           // one per identity
	certs                  [][2]string              // cert, key per client
	counts                 map[string]*atomicCounts // by action
}

type atomicCounts struct {
	mu     sync.Mutex
	n      int
	errors int
}

func (c *atomicCounts) add(err bool) {
	c.mu.Lock()
	c.n++
	if err {
		c.errors++
	}
	c.mu.Unlock()
}

func runServiceLoad(b *testing.B, srv *testservers.Server, bin string) {
	ctx := context.Background()
	f := seedLoadVault(b, srv, loadShape{total: loadCheckpoints, fetchSet: loadFetchSet, fetchBytes: loadFetchBytes})

	// The service, as users run it; it indexes the store before it listens.
	t0 := time.Now()
	proc := startServe(b, bin, f.cfgPath, 20*time.Minute)
	cmd := proc.cmd
	addr := proc.addr
	if !strings.Contains(proc.line, fmt.Sprintf("(%d checkpoints indexed)", loadCheckpoints)) {
		b.Fatalf("ckvault serve: %s, want %d checkpoints indexed", proc.line, loadCheckpoints)
	}
	startup := time.Since(t0)
	idleHWM, err := vmHWM(cmd.Process.Pid)
	must(b, err)
	anon0, file0 := rssParts(b, cmd.Process.Pid)
	b.Logf("ckvault serve after indexing: VmHWM %.0f MiB; RssAnon %.0f MiB, RssFile %.0f MiB", float64(idleHWM)/(1<<20), float64(anon0)/(1<<20), float64(file0)/(1<<20))
	base := "https://" + addr
	f.makeClients(b)

	// Phase 1: 200 clients, mixed.
	var latMu sync.Mutex
	lat := map[string][]time.Duration{}
	var fetchedBytes int64
	var errMu sync.Mutex
	var errs []string
	fail := func(format string, args ...any) {
		errMu.Lock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
		errMu.Unlock()
	}
	fetchKeys := slices.Sorted(func(yield func(string) bool) {
		for k := range f.fetch {
			if !yield(k) {
				return
			}
		}
	})
	b.ResetTimer()
	svcCPU0, err := testservers.ProcessCPU(cmd.Process.Pid)
	must(b, err)
	ownCPU0 := selfCPU()
	loadStart := time.Now()
	var wg sync.WaitGroup
	for i, c := range f.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := mrand.New(mrand.NewPCG(uint64(i), 42))
			for range loadOpsEach {
				var kind, want, path string
				switch p := rnd.IntN(100); {
				case p < 45:
					kind, want = "listed", fmt.Sprintf("ns-%03d", rnd.IntN(loadNamespaces))
					path = "/v1/checkpoints?namespace=" + want + "&limit=1000"
				case p < 90:
					kind, want = "got", f.bases[rnd.IntN(len(f.bases))]
					path = "/v1/checkpoints/" + want
				default:
					kind, want = "fetched", fetchKeys[rnd.IntN(len(fetchKeys))]
					path = "/v1/objects/" + want
				}
				t := time.Now()
				n, err := f.check(c, base, kind, path, want)
				d := time.Since(t)
				f.counts[kind].add(err != nil)
				if err != nil {
					fail("client %d %s: %v", i, path, err)
					continue
				}
				latMu.Lock()
				lat[kind] = append(lat[kind], d)
				fetchedBytes += n
				latMu.Unlock()
			}
		}()
	}
	wg.Wait()
	loadTime := time.Since(loadStart)
	b.StopTimer()
	svcCPU1, err := testservers.ProcessCPU(cmd.Process.Pid)
	must(b, err)
	ownCPU := selfCPU() - ownCPU0
	loadAvg, _ := os.ReadFile("/proc/loadavg")
	b.Logf("load phase: %s; CPU: the service %s, the 200 clients (this process) %s; /proc/loadavg %s",
		loadTime.Round(time.Millisecond), (svcCPU1 - svcCPU0).Round(time.Millisecond), ownCPU.Round(time.Millisecond), strings.TrimSpace(string(loadAvg)))
	loadHWM, err := vmHWM(cmd.Process.Pid)
	must(b, err)
	// The service's own view: mean time from request to last byte, by
	// route, from its ckvault_serve_request_seconds histogram. The rest of
	// what a client sees is waiting for CPU on either side.
	serverMean := f.serverMeans(b, base)

	// Phase 2: fetch throughput, service against direct, same objects.
	rs, err := remote.New(remote.Config{Server: base, CAFile: f.ca.CertFile, CertFile: f.certs[0][0], KeyFile: f.certs[0][1]})
	must(b, err)
	// The same through a raw net/http client over HTTP/1.1 (as vault/remote
	// speaks it): what the client library itself costs.
	kp, err := tls.LoadX509KeyPair(f.certs[1][0], f.certs[1][1])
	must(b, err)
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{kp}},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	var direct, served, served1 []float64
	var serveCPU time.Duration
	for round := range loadRounds {
		direct = append(direct, f.throughput(b, f.st, fetchKeys))
		cpu0, err := testservers.ProcessCPU(cmd.Process.Pid)
		must(b, err)
		served = append(served, f.throughput(b, rs, fetchKeys))
		cpu1, err := testservers.ProcessCPU(cmd.Process.Pid)
		must(b, err)
		serveCPU += cpu1 - cpu0
		served1 = append(served1, f.throughputHTTP(b, h1, base, fetchKeys))
		f.counts["fetched"].mu.Lock()
		f.counts["fetched"].n += 2 * len(fetchKeys)
		f.counts["fetched"].mu.Unlock()
		b.Logf("throughput round %d: direct %.0f MiB/s, through the service %.0f MiB/s (raw HTTP/1.1 client: %.0f)", round+1, direct[round], served[round], served1[round])
	}
	peakHWM, err := vmHWM(cmd.Process.Pid)
	must(b, err)
	// What the resident set is now: the index's and trail's mmapped pages
	// (bbolt) count as RssFile, the Go heap and stacks as RssAnon.
	anon, file := rssParts(b, cmd.Process.Pid)
	b.Logf("ckvault serve now: RssAnon %.0f MiB, RssFile %.0f MiB", float64(anon)/(1<<20), float64(file)/(1<<20))

	// Stop the service (it exports and closes its trail), then count.
	proc.stop(b)
	trail, err := audit.OpenReadOnly(audit.Path(filepath.Join(f.stateDir, StateSubdir)))
	must(b, err)
	defer trail.Close()
	intents, dones, other := map[string]int{}, map[string]int{}, 0
	intentSeqs := map[string]bool{}
	doneOf := map[string]bool{}
	filter := audit.Filter{Limit: audit.MaxLimit}
	for {
		p, err := trail.Query(ctx, filter)
		must(b, err)
		for _, r := range p.Records {
			switch r.Detail["phase"] {
			case "intent":
				intents[r.Action]++
				intentSeqs[strconv.FormatUint(r.Seq, 10)] = true
			case "done":
				dones[r.Action]++
				if r.Outcome != audit.OK || r.Detail["status"] != "200" {
					b.Errorf("outcome record %d: %s %s: %s (%s, %s)", r.Seq, r.Outcome, r.Detail["status"], r.Detail["reason"], r.Actor, r.Subject)
				}
				doneOf[r.Detail["intent"]] = true
			default:
				other++
			}
		}
		if p.Next == "" {
			break
		}
		filter.Cursor = p.Next
	}
	var made, errTotal, lost int
	for _, kind := range []string{"listed", "got", "fetched"} {
		c := f.counts[kind]
		made += c.n
		errTotal += c.errors
		lost += max(0, c.n-intents[kind]) + max(0, c.n-dones[kind])
		b.Logf("%s: %d requests, %d errors; trail: %d intent and %d outcome records", kind, c.n, c.errors, intents[kind], dones[kind])
		if intents[kind] != c.n || dones[kind] != c.n {
			b.Errorf("%s: %d requests made, the trail has %d intents and %d outcomes", kind, c.n, intents[kind], dones[kind])
		}
	}
	for s := range intentSeqs {
		if !doneOf[s] {
			b.Errorf("intent record %s has no outcome record", s)
			break
		}
	}
	if other != 0 {
		b.Logf("%d other records in the trail (no phase: denials or service events)", other)
	}
	for _, e := range errs {
		b.Error(e)
	}

	pct := func(kind string, p float64) float64 {
		d := slices.Clone(lat[kind])
		if len(d) == 0 {
			return 0
		}
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	var fetchSetBytes int64
	for _, k := range fetchKeys {
		info, err := f.st.Stat(ctx, k)
		must(b, err)
		fetchSetBytes += info.Size
	}
	b.ReportMetric(float64(errTotal), "errors")
	b.ReportMetric(float64(made), "requests")
	b.ReportMetric(float64(2*made), "audit-expected")
	b.ReportMetric(float64(lost), "audit-lost")
	b.ReportMetric(pct("listed", 0.50), "list-p50-ms")
	b.ReportMetric(pct("listed", 0.99), "list-p99-ms")
	b.ReportMetric(pct("got", 0.50), "get-p50-ms")
	b.ReportMetric(pct("got", 0.99), "get-p99-ms")
	b.ReportMetric(serverMean["list"], "list-server-mean-ms")
	b.ReportMetric(serverMean["checkpoint"], "get-server-mean-ms")
	b.ReportMetric(float64(len(f.clients)*loadOpsEach)/loadTime.Seconds(), "req/s")
	b.ReportMetric(float64(fetchedBytes)/loadTime.Seconds()/(1<<20), "load-fetch-MiB/s")
	b.ReportMetric(mean(direct), "direct-MiB/s")
	b.ReportMetric(mean(served), "service-MiB/s")
	b.ReportMetric(mean(served)/mean(direct), "service/direct")
	b.ReportMetric(mean(served1), "service-http1-MiB/s")
	b.ReportMetric((svcCPU1-svcCPU0).Seconds()/loadTime.Seconds(), "load-service-cores")
	b.ReportMetric(ownCPU.Seconds()/loadTime.Seconds(), "load-clients-cores")
	b.ReportMetric(float64(serveCPU.Nanoseconds())/float64(loadRounds*fetchSetBytes), "service-CPU-ns/B")
	b.ReportMetric(startup.Seconds(), "startup-index-s")
	b.ReportMetric(float64(idleHWM)/(1<<20), "idle-RSS-MiB")
	b.ReportMetric(float64(loadHWM)/(1<<20), "load-peakRSS-MiB")
	b.ReportMetric(float64(peakHWM)/(1<<20), "peakRSS-MiB")
}

// check makes one request and checks its answer: the whole namespace
// (every entry verified, none from elsewhere), the asked checkpoint's
// verified entry, or the ciphertext with the SHA-256 its manifest records.
// want is the namespace, base key or object key asked for. It returns the
// body bytes read.
func (f *loadFixture) check(c *http.Client, base, kind, path, want string) (int64, error) {
	resp, err := c.Get(base + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	switch kind {
	case "listed":
		var l remote.CheckpointList
		if err := remote.DecodeJSON(resp.Body, &l); err != nil {
			return 0, err
		}
		if len(l.Items) != f.perNS[want] || l.Next != "" {
			return 0, fmt.Errorf("%d entries (next %q), want all %d of %s", len(l.Items), l.Next, f.perNS[want], want)
		}
		for _, it := range l.Items {
			if it.Namespace != want || !it.Verified {
				return 0, fmt.Errorf("entry %s: namespace %s, verified %v", it.Base, it.Namespace, it.Verified)
			}
		}
		return 0, nil
	case "got":
		var e remote.Checkpoint
		if err := remote.DecodeJSON(resp.Body, &e); err != nil {
			return 0, err
		}
		if e.Base != want || !e.Verified || len(e.Manifest) == 0 {
			return 0, fmt.Errorf("entry %s (verified %v, %d manifest bytes), want %s", e.Base, e.Verified, len(e.Manifest), want)
		}
		return 0, nil
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return n, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.fetch[want] {
		return n, fmt.Errorf("SHA-256 %s, the manifest says %s", got, f.fetch[want])
	}
	return n, nil
}

func (f *loadFixture) makeClients(b *testing.B) {
	for _, c := range f.certs {
		kp, err := tls.LoadX509KeyPair(c[0], c[1])
		must(b, err)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: true}
		f.clients = append(f.clients, &http.Client{Transport: tr, Timeout: 5 * time.Minute})
	}
}

// throughputHTTP is throughput with a plain HTTP client of the API.
func (f *loadFixture) throughputHTTP(b *testing.B, c *http.Client, base string, keys []string) float64 {
	var g errgroup.Group
	g.SetLimit(loadStreams)
	var total int64
	var mu sync.Mutex
	t0 := time.Now()
	for _, k := range keys {
		g.Go(func() error {
			n, err := f.check(c, base, "fetched", "/v1/objects/"+k, k)
			mu.Lock()
			total += n
			mu.Unlock()
			return err
		})
	}
	must(b, g.Wait())
	return float64(total) / time.Since(t0).Seconds() / (1 << 20)
}

// throughput reads every key once, loadStreams at a time, and returns MiB/s.
func (f *loadFixture) throughput(b *testing.B, r store.Reader, keys []string) float64 {
	ctx := context.Background()
	var g errgroup.Group
	g.SetLimit(loadStreams)
	var total int64
	var mu sync.Mutex
	t0 := time.Now()
	for _, k := range keys {
		g.Go(func() error {
			o, err := r.Open(ctx, k)
			if err != nil {
				return err
			}
			defer o.Close()
			h := sha256.New()
			n, err := io.Copy(h, o)
			if err != nil {
				return fmt.Errorf("%s from %s after %d bytes: %w", k, r.Describe(), n, err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != f.fetch[k] {
				return fmt.Errorf("%s from %s: SHA-256 %s, the manifest says %s", k, r.Describe(), got, f.fetch[k])
			}
			mu.Lock()
			total += n
			mu.Unlock()
			return nil
		})
	}
	must(b, g.Wait())
	return float64(total) / time.Since(t0).Seconds() / (1 << 20)
}

// seedLoadVault fills a fresh MinIO prefix with loadCheckpoints
// checkpoints and writes the service's configuration.
func seedLoadVault(b *testing.B, srv *testservers.Server, shape loadShape) *loadFixture {
	ctx := context.Background()
	dir := b.TempDir()
	sc := storeConfig(b, string(testservers.MinIO))
	st, err := storeconfig.Open(sc, nil)
	must(b, err)
	keys, err := testvault.NewKeys(dir, true)
	must(b, err)
	ca, err := testservers.NewCA(dir, "ckvault serve bench CA")
	must(b, err)
	f := &loadFixture{dir: dir, stateDir: filepath.Join(dir, "state"), st: st, ca: ca,
		fetch: map[string]string{}, perNS: map[string]int{}, counts: map[string]*atomicCounts{}}
	for _, k := range []string{"listed", "got", "fetched"} {
		f.counts[k] = &atomicCounts{}
	}
	for i := range loadClients {
		cf, kf, err := ca.IssueClient(dir, fmt.Sprintf("client-%03d", i), fmt.Sprintf("responder-%03d", i), "", "responders")
		must(b, err)
		f.certs = append(f.certs, [2]string{cf, kf})
	}

	t0 := time.Now()
	// The fetch set: real archives, vaulted as the daemon does.
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(2)
	for i := range shape.fetchSet {
		g.Go(func() error {
			adir := filepath.Join(dir, "archives", strconv.Itoa(i))
			if err := os.MkdirAll(adir, 0o700); err != nil {
				return err
			}
			p, err := samplearchive.WriteDir(adir, samplearchive.Options{Namespace: "ns-000", Pod: fmt.Sprintf("fetch-%d", i),
				Seed: int64(i + 1), MemoryBytes: shape.fetchBytes, CheckpointedAt: samplearchive.DefaultTime.Add(time.Duration(i) * time.Minute)})
			if err != nil {
				return err
			}
			m, _, err := testvault.Put(ctx, st, keys, p, "node-a")
			if err != nil {
				return err
			}
			os.Remove(p)
			mu.Lock()
			f.fetch[m.Object+manifest.SuffixCiphertext] = m.Ciphertext.SHA256
			f.bases = append(f.bases, m.Object)
			f.perNS[m.Namespace]++
			mu.Unlock()
			return nil
		})
	}
	must(b, g.Wait())

	// The rest: signed manifests of the same archive shape in other
	// namespaces and pods, with their manifest signature.
	tmpl, err := samplearchive.WriteDir(filepath.Join(dir, "archives"), samplearchive.Options{Namespace: "tmpl", Pod: "tmpl", Seed: 99, MemoryBytes: loadFetchBytes})
	must(b, err)
	tf, err := os.Open(tmpl)
	must(b, err)
	info, err := checkpoint.Parse(tf, checkpoint.Limits{})
	tf.Close()
	must(b, err)
	var ptSum, ctSum [32]byte
	rand.Read(ptSum[:])
	rand.Read(ctSum[:])
	tBase := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	g = errgroup.Group{}
	g.SetLimit(32)
	for i := range shape.total - shape.fetchSet {
		g.Go(func() error {
			in := *info
			ns := fmt.Sprintf("ns-%03d", (i+shape.fetchSet)%loadNamespaces)
			in.Identity = checkpoint.Identity{Namespace: ns, Pod: fmt.Sprintf("api-%d", i%7), Container: "app"}
			in.Checkpointed = tBase.Add(time.Duration(i) * time.Second)
			base, err := manifest.NewKey(manifest.KeyInput{Namespace: ns, Pod: in.Identity.Pod, Container: "app", Node: "node-b", CheckpointedAt: in.Checkpointed})
			if err != nil {
				return err
			}
			m, err := manifest.New(manifest.Sealing{Object: base, Node: "node-b", OriginalName: "checkpoint.tar", Info: &in,
				CheckpointedAt: in.Checkpointed, Plaintext: manifest.NewDigest(ptSum, info.ArchiveBytes),
				Ciphertext: manifest.NewDigest(ctSum, info.ArchiveBytes+2048), Recipients: keys.Recipients.Fingerprints(),
				VaultedAt: in.Checkpointed.Add(3 * time.Second), ToolVersion: testvault.ToolVersion})
			if err != nil {
				return err
			}
			signed, err := manifest.Sign(ctx, m, keys.Signer)
			if err != nil {
				return err
			}
			for _, u := range signed.Uploads() {
				if !strings.HasSuffix(u.Key, manifest.SuffixManifest) && !strings.HasSuffix(u.Key, manifest.SuffixManifestSig) {
					continue
				}
				if _, err := st.Put(ctx, u.Key, strings.NewReader(string(u.Data)), int64(len(u.Data)), store.PutOptions{ContentType: u.ContentType, IfAbsent: true}); err != nil {
					return fmt.Errorf("seeding %s: %w", u.Key, err)
				}
			}
			mu.Lock()
			f.bases = append(f.bases, base)
			f.perNS[ns]++
			n := len(f.bases)
			mu.Unlock()
			if n%2000 == 0 {
				b.Logf("seeded %d checkpoints in %s", n, time.Since(t0).Round(time.Second))
			}
			return nil
		})
	}
	must(b, g.Wait())
	b.Logf("seeded %d checkpoints (%d with a %d MiB ciphertext) in %s", len(f.bases), shape.fetchSet, shape.fetchBytes>>20, time.Since(t0).Round(time.Second))

	storeYAML := fmt.Sprintf("  url: %s\n  caFile: %s\n  pathStyle: path\n  accessKeyFile: %s\n  secretKeyFile: %s\n", sc.URL, sc.CAFile, sc.AccessKeyFile, sc.SecretKeyFile)
	certFile, keyFile, err := ca.Issue(dir, "serve.crt", "serve.key")
	must(b, err)
	yml := fmt.Sprintf(`node: serve-bench
stateDir: %s
store:
%srecipients: [%s]
signing:
  key: %s
  publicKey: %s
serve:
  listen: 127.0.0.1:0
  tlsCert: %s
  tlsKey: %s
  clientCA: %s
  # 200 clients may all be streaming at once (the default cap is 64).
  maxStreams: 256
  roles:
    - name: responders
      verbs: [list, get, fetch]
      namespaces: ["*"]
      subjects: [{group: responders}]
`, f.stateDir, storeYAML, keys.Recipient, filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub"), certFile, keyFile, ca.CertFile)
	f.cfgPath = filepath.Join(dir, "serve.yaml")
	must(b, os.WriteFile(f.cfgPath, []byte(yml), 0o600))
	if _, err := policy.Load(f.cfgPath); err != nil {
		b.Fatalf("bench config: %v\n%s", err, yml)
	}
	return f
}

// serverMeans reads the service's /metrics and returns the mean of
// ckvault_serve_request_seconds per route, in milliseconds.
func (f *loadFixture) serverMeans(b *testing.B, base string) map[string]float64 {
	resp, err := f.clients[0].Get(base + "/metrics")
	must(b, err)
	defer resp.Body.Close()
	sum, count := map[string]float64{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		for name, dst := range map[string]map[string]float64{"ckvault_serve_request_seconds_sum{": sum, "ckvault_serve_request_seconds_count{": count} {
			rest, ok := strings.CutPrefix(l, name)
			if !ok {
				continue
			}
			labels, val, _ := strings.Cut(rest, "} ")
			route := strings.TrimSuffix(strings.TrimPrefix(labels, `route="`), `"`)
			v, err := strconv.ParseFloat(val, 64)
			must(b, err)
			dst[route] = v
		}
	}
	must(b, sc.Err())
	out := map[string]float64{}
	for r, n := range count {
		if n > 0 {
			out[r] = sum[r] / n * 1000
		}
	}
	return out
}

// rssParts reads RssAnon and RssFile (bytes) of a process.
func rssParts(b *testing.B, pid int) (anon, file int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(b, err)
	for _, l := range strings.Split(string(data), "\n") {
		for name, dst := range map[string]*int64{"RssAnon:": &anon, "RssFile:": &file} {
			if v, ok := strings.CutPrefix(l, name); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				*dst = kb << 10
			}
		}
	}
	return anon, file
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
