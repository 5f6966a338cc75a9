package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testarchive"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// childEnv makes the test binary run a daemon instead of the tests: the
// crash test SIGKILLs it.
const childEnv = "CKVAULT_TEST_DAEMON_CONFIG"

func runChild(cfgPath string) int {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(DefaultMemoryLimit) // as cmd/ckvault does
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, err := policy.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, err := New(ctx, cfg, Options{Logger: log, ConfigPath: cfgPath, PollInterval: 50 * time.Millisecond,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func startChild(t testing.TB, e *env) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+e.cfgPath)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	must(t, cmd.Start())
	return cmd
}

// stagesNow reads the state database of a killed daemon.
func stagesNow(t testing.TB, e *env) map[Stage]int {
	s, err := openState(e.stateDir)
	must(t, err)
	defer s.Close()
	all, err := s.All()
	must(t, err)
	out := map[Stage]int{}
	for _, p := range all {
		out[p.Stage]++
	}
	return out
}

// TestCrashAnywhere SIGKILLs the daemon at random moments while it vaults,
// then lets it finish: every archive ends vaulted exactly once (one object
// set per archive, nothing else in the store), never shredded before its
// proven record, and the audit trail verifies.
func TestCrashAnywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test is slow")
	}
	e := newEnv(t, envOpt{rescan: "1s"})
	iterations := 24
	rng := rand.New(rand.NewPCG(1, 2))
	var names []string
	seen := map[Stage]int{}
	for i := range iterations {
		// Two new archives per round, of varying size.
		for j := range 2 {
			o := testarchive.Options{Engine: testarchive.Engine(j), Namespace: "crash", Pod: fmt.Sprintf("pod-%d-%d", i, j),
				Container: "app", Seed: int64(i*10 + j), MemoryBytes: int64(256<<10 + rng.IntN(6<<20))}
			p, err := testarchive.WriteDir(e.ckDir, o)
			must(t, err)
			names = append(names, filepath.Base(p))
		}
		cmd := startChild(t, e)
		time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		for s, n := range stagesNow(t, e) {
			if !s.Terminal() {
				seen[s] += n
			}
		}
	}
	t.Logf("non-terminal stages found right after the kills: %v", seen)

	// Let it finish.
	cmd := startChild(t, e)
	deadline := time.Now().Add(90 * time.Second)
	for len(listTars(t, e.ckDir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("daemon did not stop cleanly: %v", err)
	}
	if left := listTars(t, e.ckDir); len(left) > 0 {
		t.Fatalf("%d archives left unvaulted: %v", len(left), left)
	}

	// Exactly one object set per archive.
	st := openStore(t, e)
	var all []string
	after := ""
	for {
		objs, next, err := st.List(context.Background(), "", after, 1000)
		must(t, err)
		for _, o := range objs {
			all = append(all, o.Key)
		}
		if next == "" {
			break
		}
		after = next
	}
	bases := map[string]int{}
	for _, k := range all {
		if strings.HasPrefix(k, "audit/") {
			continue
		}
		b, ok := manifest.BaseKeyOf(k)
		if !ok {
			t.Errorf("stray object %s", k)
			continue
		}
		bases[b]++
	}
	if len(bases) != len(names) {
		t.Errorf("%d vaulted checkpoints in the store, want %d", len(bases), len(names))
	}
	for b, n := range bases {
		if n != 6 {
			t.Errorf("%s has %d objects, want 6", b, n)
		}
	}

	recs := trail(t, e)
	checkOrder(t, recs)
	for _, n := range names {
		if countActions(recs, n, "proven") < 1 {
			t.Errorf("%s: no proven record", n)
		}
		if c := countActions(recs, n, "shredded"); c < 1 {
			t.Errorf("%s: no shredded record", n)
		}
	}
	l, err := audit.OpenReadOnly(audit.Path(e.stateDir))
	must(t, err)
	defer l.Close()
	v, err := trustedKeys(e.cfg, nil)
	must(t, err)
	rep, err := l.Verify(context.Background(), v)
	must(t, err)
	if !rep.OK() {
		t.Fatalf("audit trail does not verify: %v", rep.Findings)
	}
	t.Logf("%d archives, %d audit records, %d signed heads", len(names), rep.Records, rep.Heads)
}
