package audit

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes the test binary as a writer child that
// appends from 8 goroutines and prints each seq once Append returned; the
// parent SIGKILLs it at a random moment. Every printed seq must survive.
const (
	crashEnvDB  = "CKVAULT_AUDIT_CRASH_DB"
	crashEnvKey = "CKVAULT_AUDIT_CRASH_KEY"
)

func TestCrashWriterChild(t *testing.T) {
	path := os.Getenv(crashEnvDB)
	if path == "" {
		t.Skip("helper process for TestCrashDurability")
	}
	der, _ := base64.StdEncoding.DecodeString(os.Getenv(crashEnvKey))
	priv, err := x509.ParseECPrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	key := &testKey{priv}
	l, err := Open(path, Options{Node: "node-a", Signer: key, Verifier: key, SignEvery: 50, SignInterval: 20 * time.Millisecond})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := os.Stdout
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				seq, err := l.Append(context.Background(), rec("uploaded", "ns", "pod-"+strconv.Itoa(w), OK))
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d\n", seq) // unbuffered: one write(2) after the commit
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test is slow")
	}
	key := newTestKey(t)
	der, err := x509.MarshalECPrivateKey((*ecdsa.PrivateKey)(key.priv))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state", FileName)
	exe, _ := os.Executable()
	acked := map[uint64]bool{}
	for round := 0; round < 20; round++ {
		cmd := exec.Command(exe, "-test.run=^TestCrashWriterChild$", "-test.v=false")
		cmd.Env = append(os.Environ(), crashEnvDB+"="+path, crashEnvKey+"="+base64.StdEncoding.EncodeToString(der))
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 100 + rand.IntN(1500)
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			seq, err := strconv.ParseUint(sc.Text(), 10, 64)
			if err != nil {
				t.Fatalf("round %d: child said %q", round, sc.Text())
			}
			acked[seq] = true
			if n++; n == killAfter {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		cmd.Wait()
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d appends before the kill", round, n)
		}

		ro, err := OpenReadOnly(path)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		rep, err := ro.Verify(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("round %d: log does not verify after SIGKILL: %v", round, rep.Findings)
		}
		for seq := range acked {
			if seq > rep.Last {
				t.Fatalf("round %d: acknowledged record %d lost (log ends at %d)", round, seq, rep.Last)
			}
		}
		ro.Close()
		t.Logf("round %d: killed after %d acks; log has %d records, %d signed heads, %d unsigned", round, n, rep.Last, rep.Heads, rep.Unsigned)
	}
}
