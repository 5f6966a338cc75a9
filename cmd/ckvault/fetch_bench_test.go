package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// helperEnv carries the arguments of a ckvault run in a child process (the
// test binary itself), so that its peak RSS can be measured alone.
const helperEnv = "CKVAULT_TEST_HELPER_ARGS"

// TestHelperProcess is not a test: it is ckvault's main when the benchmark
// runs this binary as a child.
func TestHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("only runs as a child of BenchmarkFetch1GiB")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	root := newRootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "ckvault: %v\n", err)
	}
	// The exact high-water mark, read just before exiting.
	fmt.Fprintf(os.Stderr, "VmHWM=%d\n", vmHWM("/proc/self/status"))
	os.Exit(exitCode(err))
}

// runMeasured runs a command and returns its wall time and peak RSS
// (VmHWM), sampled from /proc while it runs. The kernel's ru_maxrss is no
// use here: for a child started by fork+exec from this (large) process it
// reports the parent's high-water mark.
func runMeasured(b *testing.B, cmd *exec.Cmd) (time.Duration, int64) {
	b.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var hwm int64
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			el := time.Since(start)
			if err != nil {
				b.Fatalf("%s: %v\n%s", cmd.Args[0], err, out.Bytes())
			}
			if v := reportedHWM(out.Bytes()); v > hwm {
				hwm = v
			}
			return el, hwm
		case <-tick.C:
			// Between fork and exec the child still shares this
			// process's memory; sample only once it runs its own
			// program (its name differs from ours).
			st := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
			if procName(st) != procName("/proc/self/status") {
				if v := vmHWM(st); v > hwm {
					hwm = v
				}
			}
		}
	}
}

// vmHWM reads VmHWM (bytes) from a /proc status file, 0 if unavailable.
func vmHWM(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func procName(path string) string {
	b, _ := os.ReadFile(path)
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

// reportedHWM finds the "VmHWM=N" line the helper prints as it exits.
func reportedHWM(out []byte) int64 {
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM="); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkFetch1GiB fetches, verifies and decrypts a 1 GiB checkpoint from
// the local MinIO over TLS with `ckvault fetch` in a child process, and
// compares it with the stock pipeline in the same run: curl --aws-sigv4 to a
// file, then the real `age -d`. It reports both throughputs, their ratio
// (target ≥ 1.0) and ckvault's peak RSS (target ≤ 64 MiB).
//
//	go test ./cmd/ckvault -run '^$' -bench Fetch1GiB -benchtime 1x
func BenchmarkFetch1GiB(b *testing.B) {
	ageBin := testtools.Path(b, "age")
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl is not installed")
	}
	srv := testservers.Shared(b, testservers.MinIO)
	dir := b.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		b.Fatal(err)
	}
	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600)
	os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600)
	prefix := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	scfg := policy.StoreConfig{URL: srv.StoreURL(srv.Bucket, prefix), CAFile: srv.CAFile, PathStyle: "path", AccessKeyFile: ak, SecretKeyFile: sk}
	st, err := storeconfig.Open(scfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	archive := filepath.Join(dir, samplearchive.Filename(samplearchive.Options{}))
	if err := samplearchive.WriteFile(archive, samplearchive.Options{MemoryBytes: 1<<30 - 64<<10}); err != nil {
		b.Fatal(err)
	}
	m, _, err := testvault.Put(context.Background(), st, keys, archive, "node-a")
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(archive) // the manifest has its digest; keep the disk free
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`node: bench
stateDir: %s
checkpointsDir: %s
store:
  url: %s
  caFile: %s
  pathStyle: path
  accessKeyFile: %s
  secretKeyFile: %s
recipients: [%s]
signing:
  key: %s
  publicKey: %s
`, filepath.Join(dir, "state"), filepath.Join(dir, "cp"), scfg.URL, srv.CAFile, ak, sk, keys.Recipient,
		filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub"))), 0o600)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	objURL := srv.Endpoint + "/" + srv.Bucket + "/" + prefix + "/" + m.Objects().Ciphertext
	size := float64(m.Plaintext.Size)
	n := 0

	var ours, stock, stockDurable time.Duration
	var rss, stockRSS int64
	for b.Loop() {
		n++
		// Stock: download the ciphertext, then decrypt it.
		ct, plain := filepath.Join(dir, "stock.tar.age"), filepath.Join(dir, "stock.tar")
		dl, dlRSS := runMeasured(b, exec.Command(curl, "-sSf", "--cacert", srv.CAFile,
			"--aws-sigv4", "aws:amz:us-east-1:s3", "--user", srv.AccessKey+":"+srv.SecretKey,
			"-o", ct, objURL))
		dec, decRSS := runMeasured(b, exec.Command(ageBin, "-d", "-i", filepath.Join(dir, "age.key"), "-o", plain, ct))
		if fi, err := os.Stat(plain); err != nil || fi.Size() != m.Plaintext.Size {
			b.Fatalf("stock pipeline output: %v", err)
		}
		// ckvault fsyncs its output before renaming it into place; the
		// stock pipeline does not. For a like-for-like figure, also time
		// making the stock output durable (coreutils sync FILE = fsync).
		syncTime, _ := runMeasured(b, exec.Command("sync", plain))
		os.Remove(ct)
		os.Remove(plain)
		stock += dl + dec
		stockDurable += dl + dec + syncTime
		stockRSS = max(stockRSS, dlRSS, decRSS)

		// ckvault fetch in a child process.
		out := filepath.Join(dir, "ours.tar")
		args, _ := json.Marshal([]string{"fetch", m.Object, "--config", config, "-o", out, "-i", filepath.Join(dir, "age.key")})
		cmd := exec.Command(self, "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+string(args))
		el, hwm := runMeasured(b, cmd)
		ours += el
		rss = max(rss, hwm)
		if fi, err := os.Stat(out); err != nil || fi.Size() != m.Plaintext.Size {
			b.Fatalf("ckvault fetch output: %v", err)
		}
		os.Remove(out)
	}
	// Totals over all iterations: alternating the two pipelines and
	// summing evens out the load of a shared machine.
	b.ReportMetric(float64(n)*size/ours.Seconds()/(1<<20), "ckvault-MiB/s")
	b.ReportMetric(float64(n)*size/stock.Seconds()/(1<<20), "stock-MiB/s")
	b.ReportMetric(stock.Seconds()/ours.Seconds(), "x-stock")
	b.ReportMetric(stockDurable.Seconds()/ours.Seconds(), "x-stock+fsync")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(stockRSS)/(1<<20), "stock-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}
