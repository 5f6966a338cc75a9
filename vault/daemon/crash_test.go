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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/shred"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
	"github.com/checkpoint-vault/ckvault/vault/watch"
)

// childEnv makes the test binary run a daemon instead of the tests: the
// crash test SIGKILLs it.
const childEnv = "CKVAULT_TEST_DAEMON_CONFIG"

// crashAtEnv names the crash point (see testHookStage) at which the child
// SIGKILLs itself, optionally with "+overwrite" or "+truncate": at
// shredding/claimed the child first does part of the shred's work on the
// debris (half the random overwrite, or all of it and the truncate), as a
// crash inside shred's Destroy would leave the file. crashLogEnv is a file the child
// appends "point name" to before it dies, so the parent counts the hits.
const (
	crashAtEnv  = "CKVAULT_TEST_CRASH_AT"
	crashLogEnv = "CKVAULT_TEST_CRASH_LOG"
	// partSizeEnv overrides UploadTuning.PartSize (MiB) in the child.
	partSizeEnv = "CKVAULT_TEST_PART_MIB"
)

// crashSpecs is every crash point of the pipeline (crashPoints), and at
// shredding/claimed also the two ways a crash inside the overwrite leaves
// the file.
func crashSpecs() []crashPoint {
	var out []crashPoint
	for _, cp := range crashPoints {
		out = append(out, cp)
		if cp.name == ptShredClaimed {
			out = append(out, crashPoint{name: cp.name + "+overwrite"}, crashPoint{name: cp.name + "+truncate"})
		}
	}
	return out
}

func installCrashHook(dir string) {
	spec := os.Getenv(crashAtEnv)
	if spec == "" {
		return
	}
	point, damage, _ := strings.Cut(spec, "+")
	var mu sync.Mutex
	testHookStage = func(pt string, p *Progress) {
		if pt != point {
			return
		}
		mu.Lock() // one worker dies here; the other waits for the kill
		path := filepath.Join(dir, p.Name)
		if point == ptShredClaimed {
			path = filepath.Join(dir, debrisOf(p))
		}
		switch damage {
		case "overwrite", "truncate":
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				panic(err)
			}
			n := p.Size
			if damage == "overwrite" {
				n /= 2
			}
			junk := make([]byte, n)
			rand.NewChaCha8([32]byte{byte(p.Ino)}).Read(junk)
			f.WriteAt(junk, 0)
			if damage == "truncate" {
				f.Truncate(0)
			}
			f.Sync()
			f.Close()
		}
		if l, err := os.OpenFile(os.Getenv(crashLogEnv), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			fmt.Fprintf(l, "%s %s\n", spec, p.Name)
			l.Sync()
			l.Close()
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

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
	installCrashHook(cfg.CheckpointsDir)
	if mib, _ := strconv.Atoi(os.Getenv(partSizeEnv)); mib > 0 {
		UploadTuning.PartSize = uint64(mib) << 20 // benchmarks compare part sizes
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

func startChild(t testing.TB, e *env, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+e.cfgPath), env...)
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

// checkNothingEarly checks, with the daemon dead, that every archive gone
// from the directory has a proven record before any shredded one and that
// its progress says it was being (or was) shredded.
func checkNothingEarly(t testing.TB, e *env, names []string, after string) {
	t.Helper()
	recs := trail(t, e)
	checkOrder(t, recs)
	present := map[string]bool{}
	for _, n := range listTars(t, e.ckDir) {
		present[n] = true
	}
	s, err := openState(e.stateDir)
	must(t, err)
	defer s.Close()
	all, err := s.All()
	must(t, err)
	stage := map[string]Stage{}
	for _, p := range all {
		if p.Stage == StageShredding || p.Stage == StageShredded || stage[p.Name] == "" {
			stage[p.Name] = p.Stage
		}
	}
	for _, n := range names {
		if present[n] {
			continue
		}
		if countActions(recs, n, "proven") == 0 {
			t.Errorf("after %s: %s destroyed without a proven record", after, n)
		}
		if st := stage[n]; st != StageShredding && st != StageShredded {
			t.Errorf("after %s: %s gone from the directory in stage %q", after, n, st)
		}
	}
}

// TestCrashAnywhere SIGKILLs the daemon at every crash point of the
// pipeline (testHookStage), then at random moments while it vaults, and
// finally lets it finish: every archive ends vaulted exactly once (one
// complete object set per archive), never destroyed before its proven
// record, nothing else in the store but the orphans that "abandoned"
// records name, and the audit trail verifies. It runs on the file store and
// on MinIO over TLS with and without compliance Object Lock, where an
// interrupted upload leaves a ciphertext nobody can delete.
func TestCrashAnywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test is slow")
	}
	t.Run("file", func(t *testing.T) { testCrashAnywhere(t, newEnv(t, envOpt{rescan: "1s"}), false, 24) })
	t.Run("minio", func(t *testing.T) {
		srv := testservers.Shared(t, testservers.MinIO)
		testCrashAnywhere(t, s3Env(t, srv, storetest.RandomPrefix(), envOpt{rescan: "1s"}), false, 8)
	})
	t.Run("minio-compliance-lock", func(t *testing.T) {
		srv := testservers.Shared(t, testservers.MinIO)
		bucket := srv.NewBucket(t, true)
		testCrashAnywhere(t, s3EnvBucket(t, srv, bucket, "crash", envOpt{rescan: "1s",
			storeExtra: "  objectLock: {mode: compliance, days: 1}\n"}), true, 8)
	})
}

// testCrashAnywhere runs the campaign: every crash point, then iterations
// random kills, then a clean finish.
func testCrashAnywhere(t *testing.T, e *env, locked bool, iterations int) {
	rng := rand.New(rand.NewPCG(1, 2))
	var names []string
	seen := map[Stage]int{}

	crashLog := filepath.Join(e.dir, "crashes.log")
	hits := map[string]int{}
	for i, cp := range crashSpecs() {
		var pins []string
		for j := range 2 {
			o := samplearchive.Options{Engine: samplearchive.Engine(j), Namespace: "crash", Pod: fmt.Sprintf("point-%d-%d", i, j),
				Container: "app", Seed: int64(1000 + i*10 + j), MemoryBytes: int64(128<<10 + rng.IntN(1<<20))}
			p, err := samplearchive.WriteDir(e.ckDir, o)
			must(t, err)
			names = append(names, filepath.Base(p))
			if cp.pinned {
				pins = append(pins, p+watch.PinSuffix)
				must(t, os.WriteFile(p+watch.PinSuffix, nil, 0o600))
			}
		}
		cmd := startChild(t, e, crashAtEnv+"="+cp.name, crashLogEnv+"="+crashLog)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("crash point %s not reached in 60 s", cp.name)
		}
		b, _ := os.ReadFile(crashLog)
		for _, line := range strings.Split(string(b), "\n") {
			if pt, _, ok := strings.Cut(line, " "); ok && pt == cp.name {
				hits[cp.name]++
			}
		}
		os.Remove(crashLog)
		if hits[cp.name] == 0 {
			t.Errorf("crash point %s: the daemon did not die there", cp.name)
		}
		checkNothingEarly(t, e, names, cp.name)
		for _, p := range pins {
			must(t, os.Remove(p))
		}
	}
	t.Logf("crash points hit: %v", hits)

	for i := range iterations {
		// Two new archives per round, of varying size.
		for j := range 2 {
			o := samplearchive.Options{Engine: samplearchive.Engine(j), Namespace: "crash", Pod: fmt.Sprintf("pod-%d-%d", i, j),
				Container: "app", Seed: int64(i*10 + j), MemoryBytes: int64(256<<10 + rng.IntN(6<<20))}
			p, err := samplearchive.WriteDir(e.ckDir, o)
			must(t, err)
			names = append(names, filepath.Base(p))
		}
		cmd := startChild(t, e)
		time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		checkNothingEarly(t, e, names, fmt.Sprintf("random kill %d", i))
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
	recs := trail(t, e)
	checkExactlyOnce(t, st, names, recs, locked)
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
	// No half-state survives the final run: no version still shredding,
	// no shred debris, and every shred intent has its result.
	sdb, err := openState(e.stateDir)
	must(t, err)
	defer sdb.Close()
	vers, err := sdb.All()
	must(t, err)
	for _, p := range vers {
		if !p.Stage.Terminal() {
			t.Errorf("%s (inode %d) left in stage %s", p.Name, p.Ino, p.Stage)
		}
	}
	ents, err := os.ReadDir(e.ckDir)
	must(t, err)
	for _, de := range ents {
		if shred.IsDebris(de.Name()) {
			t.Errorf("shred debris left behind: %s", de.Name())
		}
	}
	intents, results := map[string]int{}, map[string]int{}
	for _, r := range recs {
		if r.Action != "shredded" {
			continue
		}
		switch r.Detail["phase"] {
		case "intent":
			intents[r.Subject]++
		case "done":
			results[r.Subject]++
		}
	}
	for n, c := range intents {
		if results[n] < 1 {
			t.Errorf("%s: %d shred intents and no result", n, c)
		}
	}
	t.Logf("%d archives, %d audit records, %d signed heads", len(names), rep.Records, rep.Heads)
}

// checkExactlyOnce checks the store after a crash campaign: each archive
// has exactly one complete object set (a manifest naming it, and all six
// objects), and every other object is an orphan that an "abandoned" or
// "rejected" record names. Without Object Lock there are no orphans: every
// abandoned attempt was withdrawn.
func checkExactlyOnce(t *testing.T, st store.Store, names []string, recs []audit.Record, locked bool) {
	t.Helper()
	ctx := context.Background()
	keys := allKeys(t, st)
	bases := map[string]map[string]bool{}
	for _, k := range keys {
		if strings.HasPrefix(k, "audit/") {
			continue
		}
		b, ok := manifest.BaseKeyOf(k)
		if !ok {
			t.Errorf("stray object %s", k)
			continue
		}
		if bases[b] == nil {
			bases[b] = map[string]bool{}
		}
		bases[b][k] = true
	}
	orphaned := map[string]bool{}
	abandoned := 0
	for _, r := range recs {
		if r.Action == "abandoned" {
			abandoned++
		}
		for _, k := range strings.Split(r.Detail["orphans"], ",") {
			if k != "" {
				orphaned[k] = true
			}
		}
	}
	vaulted := map[string]int{}
	orphans := 0
	for b, objs := range bases {
		if len(objs) == 6 {
			raw, err := testvault.GetBytes(ctx, st, manifest.ObjectsFor(b).Manifest)
			must(t, err)
			m, err := manifest.Parse(raw)
			must(t, err)
			vaulted[m.OriginalName]++
			continue
		}
		for k := range objs {
			orphans++
			if !orphaned[k] {
				t.Errorf("%s is in the store without a manifest and no audit record names it as an orphan", k)
			}
		}
	}
	for _, n := range names {
		if vaulted[n] != 1 {
			t.Errorf("%s vaulted %d times, want exactly once", n, vaulted[n])
		}
	}
	if !locked && orphans > 0 {
		t.Errorf("%d orphaned objects without Object Lock: abandoned attempts must be withdrawn", orphans)
	}
	t.Logf("%d archives vaulted once each; %d abandoned attempts, %d orphaned objects kept by Object Lock", len(names), abandoned, orphans)
}

// allKeys lists every object key in st.
func allKeys(t *testing.T, st store.Store) []string {
	t.Helper()
	var keys []string
	after := ""
	for {
		objs, next, err := st.List(context.Background(), "", after, 1000)
		must(t, err)
		for _, o := range objs {
			keys = append(keys, o.Key)
		}
		if next == "" {
			return keys
		}
		after = next
	}
}
