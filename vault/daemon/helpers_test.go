package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/policy"
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(runChild(cfg))
	}
	os.Exit(testservers.Main(m))
}

// env is one test's node: keys, a config, a checkpoints directory and a
// store.
type env struct {
	dir, ckDir, stateDir, storeDir string
	cfgPath                        string
	identity                       string // age identity file
	cfg                            *policy.Config
}

type envOpt struct {
	storeYAML  string // replaces the file:// store block
	storeExtra string // appended to an S3 store block (s3EnvBucket)
	extra      string // appended YAML
	rescan     string
}

func newEnv(t testing.TB, o envOpt) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir, ckDir: filepath.Join(dir, "checkpoints"), stateDir: filepath.Join(dir, "state"),
		storeDir: filepath.Join(dir, "store")}
	id, rcpt, err := envelope.GenerateIdentity(false)
	if err != nil {
		t.Fatal(err)
	}
	e.identity = filepath.Join(dir, "age.key")
	must(t, os.WriteFile(e.identity, []byte(id+"\n"), 0o600))
	priv, pub, err := signing.GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "signing.key"), priv, 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "signing.pub"), pub, 0o644))
	must(t, os.MkdirAll(e.ckDir, 0o700))
	must(t, os.MkdirAll(e.storeDir, 0o700))
	if o.storeYAML == "" {
		o.storeYAML = "store:\n  url: file://" + e.storeDir + "\n"
	}
	if o.rescan == "" {
		o.rescan = "30s"
	}
	y := fmt.Sprintf(`node: node-a
checkpointsDir: %s
stateDir: %s
%srecipients: [%s]
signing:
  key: signing.key
  publicKey: signing.pub
daemon:
  workers: 2
  listen: 127.0.0.1:0
  owner: any
  rescanInterval: %s
audit:
  signEvery: 20
  signInterval: 1s
  exportInterval: 1h
%s`, e.ckDir, e.stateDir, o.storeYAML, rcpt, o.rescan, o.extra)
	e.cfgPath = filepath.Join(dir, "ckvault.yaml")
	must(t, os.WriteFile(e.cfgPath, []byte(y), 0o600))
	e.cfg, err = policy.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func quietLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewJSONHandler(io.Discard, nil))
}

// running is an in-process daemon.
type running struct {
	d    *Daemon
	stop func() error
}

func startDaemon(t testing.TB, e *env, opts Options) *running {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger(t)
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 50 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, e.cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("daemon did not start: %v", err)
	}
	stopped := false
	var stopErr error
	r := &running{d: d}
	r.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			stopErr = <-errc
		}
		return stopErr
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// trail reads the audit log (the daemon must be stopped).
func trail(t testing.TB, e *env) []audit.Record {
	t.Helper()
	l, err := audit.OpenReadOnly(audit.Path(e.stateDir))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out []audit.Record
	f := audit.Filter{Limit: audit.MaxLimit}
	for {
		p, err := l.Query(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p.Records...)
		if p.Next == "" {
			return out
		}
		f.Cursor = p.Next
	}
}

func countActions(recs []audit.Record, subject, action string) int {
	n := 0
	for _, r := range recs {
		if r.Subject == subject && r.Action == action && r.Detail["phase"] != "done" {
			n++
		}
	}
	return n
}

func listTars(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tar") {
			out = append(out, e.Name())
		}
	}
	return out
}
