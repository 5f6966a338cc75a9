package service

import (
	"context"
	"crypto/tls"
	"maps"
	"net/http"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// BenchmarkServiceFetch measures fetch throughput through `ckvault serve`
// (the real binary, MinIO over TLS, mTLS clients) against reading the same
// ciphertexts straight from MinIO with the store client the service itself
// uses, alternating direct and service fetchRounds times in one run, for
// checkpoints of a realistic size (fetchBenchBytes of memory each) and for
// the load benchmark's small ones. Both sides hash what they read, as a
// client checking the manifest's digest does. Run with -benchtime=1x.
//
// Reported per size: direct and service MiB/s (means), their ratio
// (target >= 0.9), a raw HTTP/1.1 client through the service, and where
// the CPU went, per byte fetched: MinIO, the client (this process) and the
// service, on either path. All three share the machine's cores, so when
// they are saturated the ratio cannot exceed cpu-bound = (CPU per byte
// direct) / (CPU per byte through the service): the service's own work
// (a second TLS hop, the SHA-256 of the bytes sent for the outcome
// record) lands on the same cores as MinIO's and the client's.
func BenchmarkServiceFetch(b *testing.B) {
	srv := testservers.Shared(b, testservers.MinIO)
	bin := buildCkvault(b)
	for _, c := range []struct {
		name   string
		shape  loadShape
		ownCPU bool
	}{
		{"64MiB", loadShape{total: 4, fetchSet: 4, fetchBytes: 64 << 20}, false},
		{"4MiB", loadShape{total: 16, fetchSet: 16, fetchBytes: 4 << 20}, false},
		{"64MiB-service-own-CPU", loadShape{total: 4, fetchSet: 4, fetchBytes: 64 << 20}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.ownCPU && runtime.NumCPU() < 2 {
				b.Skip("needs two CPUs")
			}
			for i := 0; i < b.N; i++ {
				runServiceFetch(b, srv, bin, c.shape, c.ownCPU)
			}
		})
	}
}

const fetchRounds = 3

// runServiceFetch compares direct and service fetches of shape's
// checkpoints. With ownCPU, MinIO and the clients (this process) share CPU
// 0 and the service has CPU 1 to itself, as when the service runs on its
// own node: both paths then have the same CPU for MinIO and the client,
// and the service's work is no longer taken from them.
func runServiceFetch(b *testing.B, srv *testservers.Server, bin string, shape loadShape, ownCPU bool) {
	f := seedLoadVault(b, srv, shape)
	proc := startServe(b, bin, f.cfgPath, 5*time.Minute)
	defer proc.stop(b)
	if ownCPU {
		for pid, cpu := range map[int]int{srv.Pid(): 0, os.Getpid(): 0, proc.cmd.Process.Pid: 1} {
			undo, err := testservers.PinProcess(pid, cpu)
			must(b, err)
			defer undo()
		}
	}
	base := "https://" + proc.addr
	rs, err := remote.New(remote.Config{Server: base, CAFile: f.ca.CertFile, CertFile: f.certs[0][0], KeyFile: f.certs[0][1]})
	must(b, err)
	kp, err := tls.LoadX509KeyPair(f.certs[1][0], f.certs[1][1])
	must(b, err)
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.ca.Pool(), Certificates: []tls.Certificate{kp}},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	keys := slices.Sorted(maps.Keys(f.fetch))
	var setBytes int64
	for _, k := range keys {
		info, err := f.st.Stat(context.Background(), k)
		must(b, err)
		setBytes += info.Size
	}
	// One untimed round of each warms the connections and the page cache.
	f.throughput(b, f.st, keys)
	f.throughput(b, rs, keys)
	b.ResetTimer()
	var direct, served, served1 []float64
	var directCPU, servedCPU cpuSplit
	for round := range fetchRounds {
		c0 := f.cpuNow(b, srv, proc)
		direct = append(direct, f.throughput(b, f.st, keys))
		c1 := f.cpuNow(b, srv, proc)
		served = append(served, f.throughput(b, rs, keys))
		c2 := f.cpuNow(b, srv, proc)
		directCPU, servedCPU = directCPU.plus(c1.minus(c0)), servedCPU.plus(c2.minus(c1))
		served1 = append(served1, f.throughputHTTP(b, h1, base, keys))
		b.Logf("round %d: direct %.0f MiB/s, through the service %.0f MiB/s (raw HTTP/1.1 client: %.0f)", round+1, direct[round], served[round], served1[round])
	}
	b.StopTimer()
	perByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(fetchRounds*setBytes) }
	b.ReportMetric(mean(direct), "direct-MiB/s")
	b.ReportMetric(mean(served), "service-MiB/s")
	b.ReportMetric(mean(served)/mean(direct), "service/direct")
	b.ReportMetric(mean(served1), "service-http1-MiB/s")
	b.ReportMetric(perByte(directCPU.total()), "direct-CPU-ns/B")
	b.ReportMetric(perByte(servedCPU.total()), "via-service-CPU-ns/B")
	b.ReportMetric(perByte(servedCPU.service), "service-CPU-ns/B")
	b.ReportMetric(perByte(directCPU.store), "minio-CPU-ns/B")
	b.ReportMetric(perByte(directCPU.client), "direct-client-CPU-ns/B")
	b.ReportMetric(perByte(servedCPU.client), "service-client-CPU-ns/B")
	b.ReportMetric(float64(directCPU.total())/float64(servedCPU.total()), "cpu-bound")
}

// cpuSplit is CPU time spent by MinIO, the service and the clients (this
// process).
type cpuSplit struct{ store, service, client time.Duration }

func (c cpuSplit) plus(d cpuSplit) cpuSplit {
	return cpuSplit{c.store + d.store, c.service + d.service, c.client + d.client}
}
func (c cpuSplit) minus(d cpuSplit) cpuSplit {
	return cpuSplit{c.store - d.store, c.service - d.service, c.client - d.client}
}
func (c cpuSplit) total() time.Duration { return c.store + c.service + c.client }

func (f *loadFixture) cpuNow(b *testing.B, srv *testservers.Server, proc *serveProc) cpuSplit {
	st, err := testservers.ProcessCPU(srv.Pid())
	must(b, err)
	sv, err := testservers.ProcessCPU(proc.cmd.Process.Pid)
	must(b, err)
	return cpuSplit{store: st, service: sv, client: selfCPU()}
}

func mean(v []float64) float64 {
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}
