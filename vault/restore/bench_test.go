package restore_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testregistry"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/restore"
)

// BenchmarkRestore measures `ckvault restore` of one large checkpoint
// (CKVAULT_BENCH_RESTORE_MIB, default 1024 MiB of memory pages) to a TLS
// registry on loopback, against what a responder would do without it:
// `ckvault fetch` to a file, then stock `crane append` of that tar. The
// registry runs in a child process, so peak-RSS-MiB (VmHWM of this process,
// reset before each contender with /proc/self/clear_refs) is the client's
// alone. This is the library in process, on the file store with test keys;
// BenchmarkRestore1GiB in cmd/ckvault measures the shipped binary in the
// default configuration (keygen keys, MinIO over TLS), whose figures the
// README quotes.
//
//	go test -run XXX -bench Restore -benchtime 1x ./vault/restore
func BenchmarkRestore(b *testing.B) {
	mib := int64(1024)
	if s := os.Getenv("CKVAULT_BENCH_RESTORE_MIB"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		mib = v
	}
	craneBin := testtools.Path(b, "crane")
	f := newFixture(b, samplearchive.Options{Engine: samplearchive.CRIO, MemoryBytes: mib << 20})
	reg := testregistry.StartProcess(b)
	ids := []age.Identity{f.keys.Identity}
	b.Logf("archive %d MiB", f.m.Plaintext.Size>>20)

	b.Run("restore", func(b *testing.B) {
		b.SetBytes(f.m.Plaintext.Size)
		resetPeak(b)
		for i := range b.N {
			var res restore.Result
			tag := fmt.Sprintf("%s/bench/restore:%d", reg.Host, i)
			if _, err := f.r.Restore(context.Background(), f.id(), responder.RestoreOptions{
				FetchOptions: responder.FetchOptions{Identities: ids},
				TempDir:      f.tmp,
				Publish:      pushTo(tag, restore.PushOptions{RootCAs: reg.Pool}, &res),
			}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(peakMiB(b), "peak-RSS-MiB")
	})
	b.Run("fetch+crane-append", func(b *testing.B) {
		b.SetBytes(f.m.Plaintext.Size)
		resetPeak(b)
		for i := range b.N {
			out := filepath.Join(f.tmp, "archive.tar")
			if _, err := f.r.Fetch(context.Background(), f.id(), out, responder.FetchOptions{Identities: ids}); err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(craneBin, "append", "-f", out, "-t", fmt.Sprintf("%s/bench/append:%d", reg.Host, i))
			cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile)
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("crane append: %v\n%s", err, o)
			}
			os.Remove(out)
		}
		// The fetch side only: crane's own memory is another process's.
		b.ReportMetric(peakMiB(b), "fetch-peak-RSS-MiB")
	})
}

// resetPeak resets this process's peak RSS (VmHWM), Linux ≥ 4.0, after
// returning the set-up's garbage to the system (the reset sets the peak to
// the current RSS).
func resetPeak(b *testing.B) {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset the peak RSS (%v); peak-RSS-MiB includes the set-up", err)
	}
}

func peakMiB(b *testing.B) float64 {
	fh, err := os.Open("/proc/self/status")
	if err != nil {
		b.Logf("no /proc/self/status: %v", err)
		return 0
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
