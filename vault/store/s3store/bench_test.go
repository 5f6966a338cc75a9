package s3store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// genReader yields n deterministic pseudo-random bytes without holding
// them: a 4 MiB random block, with a block counter stamped into each copy
// so no two blocks are equal. Standing in for age ciphertext, it does not
// compress or deduplicate.
type genReader struct {
	block []byte
	off   int64
	n     int64
}

func newGenReader(n int64) *genReader {
	b := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{'c', 'k', 'v'}).Read(b)
	return &genReader{block: b, n: n}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.off >= g.n {
		return 0, io.EOF
	}
	bs := int64(len(g.block))
	total := 0
	for len(p) > 0 && g.off < g.n {
		i := g.off % bs
		if i == 0 {
			binary.LittleEndian.PutUint64(g.block, uint64(g.off/bs))
		}
		m := copy(p, g.block[i:min(bs, i+g.n-g.off)])
		p = p[m:]
		g.off += int64(m)
		total += m
	}
	return total, nil
}

const benchSize = 2 << 30

// BenchmarkUpload2GiB uploads 2 GiB to a local MinIO (or the server named
// by $CKVAULT_BENCH_SERVER) over TLS through
// s3store in a child process (so its peak RSS is the upload's alone), and
// the same bytes from a file with curl --aws-sigv4, and reports both
// throughputs and the child's VmHWM.
//
//	go test -run '^$' -bench Upload2GiB -benchtime 1x ./vault/store/s3store
func BenchmarkUpload2GiB(b *testing.B) {
	kind := testservers.MinIO
	if k := os.Getenv("CKVAULT_BENCH_SERVER"); k != "" {
		kind = testservers.Kind(k) // e.g. versitygw
	}
	srv := testservers.Shared(b, kind)
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl not installed: no stock client to compare with")
	}
	if out, _ := exec.Command(curl, "--help", "all").Output(); !bytes.Contains(out, []byte("--aws-sigv4")) {
		b.Skip("this curl has no --aws-sigv4")
	}
	dir := b.TempDir()
	file := filepath.Join(dir, "ciphertext.bin")
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, newGenReader(benchSize)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	defer os.Remove(file)

	for _, mode := range []struct{ name, threshold string }{
		{"multipart-2x16MiB", "0"}, // the default
		{"single-PUT", strconv.Itoa(5 << 30)},
	} {
		b.Run(mode.name, func(b *testing.B) { benchUpload(b, srv, curl, file, mode.threshold) })
	}
}

func benchUpload(b *testing.B, srv *testservers.Server, curl, file, threshold string) {
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestUploadChild$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"CKVAULT_BENCH_CHILD=1",
			"CKVAULT_BENCH_URL="+srv.StoreURL(srv.Bucket, "bench"),
			"CKVAULT_BENCH_CA="+srv.CAFile,
			"CKVAULT_BENCH_AK="+srv.AccessKey,
			"CKVAULT_BENCH_SK="+srv.SecretKey,
			"CKVAULT_BENCH_THRESHOLD="+threshold,
		)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("upload child: %v\n%s", err, out)
		}
		var secs float64
		var hwm int64
		for _, line := range strings.Split(string(out), "\n") {
			if rest, ok := strings.CutPrefix(line, "UPLOAD "); ok {
				fmt.Sscanf(rest, "%f %d", &secs, &hwm)
			}
		}
		if secs == 0 {
			b.Fatalf("upload child printed no result:\n%s", out)
		}
		oursMBs := float64(benchSize) / secs / 1e6

		url := srv.Endpoint + "/" + srv.Bucket + "/bench/curl.bin"
		cstart := time.Now()
		cc := exec.Command(curl, "-sS", "--fail-with-body", "--aws-sigv4", "aws:amz:us-east-1:s3",
			"--user", srv.AccessKey+":"+srv.SecretKey, "--cacert", srv.CAFile,
			"-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
			"-T", file, url, "-o", "/dev/null")
		if cout, err := cc.CombinedOutput(); err != nil {
			b.Fatalf("curl: %v\n%s", err, cout)
		}
		curlSecs := time.Since(cstart).Seconds()
		curlMBs := float64(benchSize) / curlSecs / 1e6
		st, err := srv.Client(b).StatObject(context.Background(), srv.Bucket, "bench/curl.bin", minioStat())
		if err != nil || st.Size != benchSize {
			b.Fatalf("curl's object: %+v, %v", st, err)
		}

		b.ReportMetric(oursMBs, "ckvault-MB/s")
		b.ReportMetric(curlMBs, "curl-MB/s")
		b.ReportMetric(oursMBs/curlMBs, "ratio")
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
		b.Logf("ckvault s3store: %.0f MB/s, peak RSS %.1f MiB; curl --aws-sigv4: %.0f MB/s; ratio %.2f",
			oursMBs, float64(hwm)/1024, curlMBs, oursMBs/curlMBs)
	}
}

// TestUploadChild is the benchmark's uploading process; it does nothing
// unless run by BenchmarkUpload2GiB.
func TestUploadChild(t *testing.T) {
	if os.Getenv("CKVAULT_BENCH_CHILD") != "1" {
		t.Skip("only run by BenchmarkUpload2GiB")
	}
	threshold, _ := strconv.ParseInt(os.Getenv("CKVAULT_BENCH_THRESHOLD"), 10, 64)
	s, err := New(Config{
		URL:                os.Getenv("CKVAULT_BENCH_URL"),
		CAFile:             os.Getenv("CKVAULT_BENCH_CA"),
		Credentials:        credentials.NewStaticV4(os.Getenv("CKVAULT_BENCH_AK"), os.Getenv("CKVAULT_BENCH_SK"), ""),
		PathStyle:          "path",
		MultipartThreshold: threshold,
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	oi, err := s.Put(context.Background(), "ckvault.bin", newGenReader(benchSize), benchSize, store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	if oi.Size != benchSize {
		t.Fatalf("size %d", oi.Size)
	}
	fmt.Printf("UPLOAD %f %d\n", secs, vmHWM(t))
}

// vmHWM returns this process's peak resident set size in KiB.
func vmHWM(t *testing.T) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return v
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

func minioStat() minio.StatObjectOptions { return minio.StatObjectOptions{} }
