package gc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
	"github.com/checkpoint-vault/ckvault/vault/store/s3store"
)

// The crash test runs GC in a child process (this test binary, re-executed
// with childEnv set) that SIGKILLs itself at one durable step of Execute.
const (
	childEnv   = "CKVAULT_GC_CHILD"    // store: file:///DIR or s3 URL|CA|AK|SK
	crashAtEnv = "CKVAULT_GC_CRASH_AT" // 1-based step to die at; 0 = none
	auditEnv   = "CKVAULT_GC_AUDIT"    // audit trail path
	pubEnv     = "CKVAULT_GC_PUB"      // trusted public key
)

// crashNow is an hour ahead, so the orphan is past its grace at once.
func crashNow() time.Time { return time.Now().Add(time.Hour) }

func crashPolicy() *policy.RetentionConfig {
	return &policy.RetentionConfig{Global: &policy.RetentionLimits{MaxCount: 2}, OrphanGrace: "1s"}
}

func openSpec(spec string) (Store, error) {
	if dir, ok := strings.CutPrefix(spec, "file://"); ok {
		return filestore.New(dir)
	}
	p := strings.Split(spec, "|")
	if len(p) != 4 {
		return nil, fmt.Errorf("bad store spec %q", spec)
	}
	return s3store.New(s3store.Config{URL: p[0], CAFile: p[1], PathStyle: "path",
		Credentials: credentials.NewStaticV4(p[2], p[3], "")})
}

// runChild is the child: one GC run that dies at step CKVAULT_GC_CRASH_AT.
func runChild() int {
	st, err := openSpec(os.Getenv(childEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tk, err := signing.LoadTrustedKeys(os.Getenv(pubEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	l, err := audit.Open(os.Getenv(auditEnv), audit.Options{Node: "gc-test"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	crashAt, _ := strconv.Atoi(os.Getenv(crashAtEnv))
	step := 0
	opts := Options{Policy: crashPolicy(), Trusted: tk, Audit: l, Actor: "gc-child", Concurrency: 1, Now: crashNow,
		testHook: func(string) {
			step++
			if step == crashAt {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}}
	ctx := context.Background()
	plan, err := PlanRun(ctx, st, opts)
	if err == nil {
		_, err = Execute(ctx, st, opts, plan)
	}
	l.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(step)
	return 0
}

// TestCrashDuringGC kills GC at every durable step of a run that deletes
// three checkpoints and an orphan, on the file store and MinIO, and checks
// after each crash that no manifest is left without its ciphertext, that
// every ciphertext without a manifest is reported by the next plan (not
// silently orphaned), and that the next run ends in exactly the state an
// uninterrupted run leaves, with every deletion audited.
func TestCrashDuringGC(t *testing.T) {
	for _, b := range []backend{fileBackend(), s3Backend(testservers.MinIO)} {
		t.Run(b.name, func(t *testing.T) { testCrash(t, b) })
	}
}

// crashVault is one fresh vault for the crash test and what GC must leave.
type crashVault struct {
	st        Store
	spec      string
	keep, del []string
	orphan    string
}

func newCrashVault(t *testing.T, b backend) crashVault {
	k := testKeys(t)
	st := b.new(t)
	var spec string
	switch s := st.(type) {
	case *filestore.Store:
		spec = strings.TrimPrefix(s.Describe(), "file://")
		spec = "file://" + spec
	case *s3store.Store:
		srv := testservers.Shared(t, testservers.MinIO)
		// Describe is "s3 https://HOST/BUCKET/PREFIX".
		spec = strings.TrimPrefix(s.Describe(), "s3 ") + "|" + srv.CAFile + "|" + srv.AccessKey + "|" + srv.SecretKey
	}
	now := time.Now()
	var v crashVault
	v.st, v.spec = st, spec
	orphan := putCheckpoint(t, st, k.signer, spec0(900, now.Add(-time.Hour)))
	dropAll(t, st, manifest.ObjectsFor(orphan).Manifest)
	for i := range 5 {
		b := putCheckpoint(t, st, k.signer, spec0(901+i, now.Add(-time.Duration(i+1)*time.Hour)))
		if i < 2 {
			v.keep = append(v.keep, b)
		} else {
			v.del = append(v.del, b)
		}
	}
	v.del = append(v.del, orphan)
	v.orphan = orphan
	return v
}

// planSummary is a plan without its version lists.
func planSummary(p *Plan) string {
	var b strings.Builder
	for _, a := range p.Delete {
		fmt.Fprintf(&b, "delete %s (%s, %d versions); ", a.Base, a.Limit, len(a.Versions))
	}
	for _, l := range []struct {
		what string
		hs   []Held
	}{{"pinned", p.Pinned}, {"deferred", p.Deferred}, {"young orphan", p.YoungOrphans}, {"abandon", p.Abandon}} {
		for _, h := range l.hs {
			fmt.Fprintf(&b, "%s %s (%s); ", l.what, h.Base, h.Why)
		}
	}
	for _, u := range p.Unverified {
		fmt.Fprintf(&b, "unverified %s (%s); ", u.Base, u.Err)
	}
	return b.String()
}

// sixSuffixes are the objects of one checkpoint.
var sixSuffixes = []string{manifest.SuffixCiphertext, manifest.SuffixCiphertextSig, manifest.SuffixCiphertextBundle,
	manifest.SuffixManifest, manifest.SuffixManifestSig, manifest.SuffixManifestBundle}

func spec0(seq int, at time.Time) spec {
	return spec{ns: "web", pod: "a", ctr: "c", at: at, seq: seq}
}

func testCrash(t *testing.T, b backend) {
	k := testKeys(t)
	// How many steps does an uninterrupted run take?
	v := newCrashVault(t, b)
	steps := 0
	opts := Options{Policy: crashPolicy(), Trusted: k.trusted, Audit: openLog(t), Actor: "gc-test", Concurrency: 1, Now: crashNow,
		testHook: func(string) { steps++ }}
	plan, err := PlanRun(context.Background(), v.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Execute(context.Background(), v.st, opts, plan); err != nil {
		t.Fatal(err)
	}
	if d := diff(stateOf(t, v.st).complete(), v.keep); d != "" || steps < 30 {
		t.Fatalf("uninterrupted run: %d steps, survivors differ:\n%s", steps, d)
	}

	for crashAt := 1; crashAt <= steps; crashAt++ {
		failedBefore := t.Failed()
		v := newCrashVault(t, b)
		auditPath := filepath.Join(privateDir(t), "audit.db")
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+v.spec, crashAtEnv+"="+strconv.Itoa(crashAt),
			auditEnv+"="+auditPath, pubEnv+"="+k.pubFile)
		out, err := cmd.CombinedOutput()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("crash at step %d: child was not killed (%v): %s", crashAt, err, out)
		}

		// After the crash: never a manifest without its ciphertext; every
		// ciphertext without a manifest is in the next plan.
		crashed := stateOf(t, v.st)
		tk := k.trusted
		l, err := audit.Open(auditPath, audit.Options{Node: "gc-test"})
		if err != nil {
			t.Fatal(err)
		}
		opts := Options{Policy: crashPolicy(), Trusted: tk, Audit: l, Actor: "gc-test", Now: crashNow}
		plan, err := PlanRun(context.Background(), v.st, opts)
		if err != nil {
			t.Fatal(err)
		}
		// Bases named by an intent are planned as unfinished, whatever
		// their age: that is what keeps them from being silently
		// orphaned (the deliberate orphan is planned by its age).
		planned := map[string]bool{}
		for _, a := range plan.Delete {
			planned[a.Base] = a.Limit == LimitUnfinished || a.Base == v.orphan
		}
		for base, sfx := range crashed.bases {
			if sfx[manifest.SuffixManifest] && !sfx[manifest.SuffixCiphertext] {
				t.Errorf("crash at step %d: %s has a manifest without its ciphertext", crashAt, base)
			}
			if !sfx[manifest.SuffixManifest] && crashed.counts[base] > 0 && !planned[base] {
				t.Errorf("crash at step %d: %s has objects but no manifest, and the next run does not finish it as a recorded intent (silently orphaned)", crashAt, base)
			}
			// The six objects go together: a checkpoint still listed (its
			// manifest there) is whole, and one that is not whole is a
			// deletion the next run finishes.
			whole := true
			for _, x := range sixSuffixes {
				whole = whole && sfx[x]
			}
			if sfx[manifest.SuffixManifest] && !whole {
				t.Errorf("crash at step %d: %s keeps its manifest but not all six objects: %v", crashAt, base, sfx)
			}
			if !whole && crashed.counts[base] > 0 && !planned[base] {
				t.Errorf("crash at step %d: %s is neither whole nor finished by the next run: %v", crashAt, base, sfx)
			}
		}
		res, err := Execute(context.Background(), v.st, opts, plan)
		if err != nil {
			t.Fatalf("crash at step %d: recovery run: %v", crashAt, err)
		}
		for _, f := range res.Failed {
			t.Errorf("crash at step %d: the recovery run failed to delete %s: %v", crashAt, f.Action.Base, f.Err)
		}
		final := stateOf(t, v.st)
		if d := diff(final.complete(), v.keep); d != "" {
			t.Errorf("crash at step %d: survivors after recovery differ:\n%s", crashAt, d)
		}
		for _, b := range v.del {
			if n := final.counts[b]; n != 0 {
				t.Errorf("crash at step %d: %s keeps %d versions after recovery", crashAt, b, n)
			}
		}
		if len(final.other) != 0 {
			t.Errorf("crash at step %d: objects left besides checkpoints: %q", crashAt, final.other)
		}
		// Every deletion has its outcome on record, across both runs.
		p, err := l.Query(context.Background(), audit.Filter{Action: ActionDeleted, Limit: audit.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		done := map[string]bool{}
		for _, r := range p.Records {
			if r.Detail["phase"] == "outcome" && r.Outcome == audit.OK {
				done[r.Subject] = true
			}
		}
		for _, b := range v.del {
			if !done[b] {
				t.Errorf("crash at step %d: the deletion of %s has no outcome record", crashAt, b)
			}
		}
		if t.Failed() && !failedBefore {
			// What the recovery saw, so that a failure says why.
			t.Logf("crash at step %d: versions after the crash %v; the recovery plan: %s", crashAt, crashed.counts, planSummary(plan))
			if _, ok := v.st.(*s3store.Store); ok {
				t.Logf("the end of MinIO's log:\n%s", testservers.Shared(t, testservers.MinIO).Log())
			}
		}
		l.Close()
	}
	t.Logf("killed GC at each of %d steps", steps)
}
