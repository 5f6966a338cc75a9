package seal

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// writeInput writes n bytes made by repeating block to a file in dir and
// reads it once, so both contenders read the same file from the page cache
// (as the daemon reads a freshly written archive) and neither pays for disk.
func writeInput(b *testing.B, dir string, block []byte, n int64) string {
	path := filepath.Join(dir, fmt.Sprintf("plain-%d", n))
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	for left := n; left > 0; {
		m := min(left, int64(len(block)))
		if _, err := f.Write(block[:m]); err != nil {
			b.Fatal(err)
		}
		left -= m
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	warm, err := os.ReadFile(path)
	if err != nil || int64(len(warm)) != n {
		b.Fatal(err)
	}
	return path
}

// BenchmarkSeal1GiB compares sealing (SHA-256 of the plaintext + age
// encryption + SHA-256 of the ciphertext) with the stock `age -r` CLI
// encrypting the same input file, in the same run (`age -r R -o /dev/null
// FILE`, its fastest form: no pipe to feed). Output goes to /dev/null in
// both cases. The 64 MiB case shows that allocations do not grow with the
// stream size; -short skips the 1 GiB cases.
//
//	go test -run '^$' -bench Seal1GiB -benchmem ./vault/seal/
func BenchmarkSeal1GiB(b *testing.B) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	_, rc, err := envelope.GenerateIdentity(true)
	if err != nil {
		b.Fatal(err)
	}
	r, _ := envelope.ParseRecipient(rc)
	set, _ := envelope.NewRecipientSet(r)
	block := randomBytes(1<<20, 42)
	dir := b.TempDir()

	sizes := []int64{64 << 20, 1 << 30}
	if testing.Short() {
		sizes = sizes[:1]
	}
	results := map[string]float64{}
	for _, size := range sizes {
		name := fmt.Sprintf("%dMiB", size>>20)
		input := writeInput(b, dir, block, size)
		b.Run("ckvault/"+name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				f, err := os.Open(input)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Seal(context.Background(), devnull, f, size, set); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
			// CPU time per byte does not depend on how busy the machine is.
			b.ReportMetric(float64(processCPU()-cpu0)/float64(size)/float64(b.N), "cpu-ns/B")
			results["ckvault/"+name] = float64(size) * float64(b.N) / b.Elapsed().Seconds() / 1e6
		})
		b.Run("age-cli/"+name, func(b *testing.B) {
			agePath := testtools.Path(b, "age")
			b.SetBytes(size)
			var cpu time.Duration
			for b.Loop() {
				cmd := exec.Command(agePath, "-r", rc, "-o", os.DevNull, input)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("age: %v: %s", err, out)
				}
				cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			b.ReportMetric(float64(cpu)/float64(size)/float64(b.N), "cpu-ns/B")
			results["age-cli/"+name] = float64(size) * float64(b.N) / b.Elapsed().Seconds() / 1e6
		})
		if a, o := results["age-cli/"+name], results["ckvault/"+name]; a > 0 && o > 0 {
			b.Logf("%s: ckvault seal %.0f MB/s, age CLI %.0f MB/s, ratio %.2f (target >= 0.90)", name, o, a, o/a)
		}
	}
}

// processCPU is the user+system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
