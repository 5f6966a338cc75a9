package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// demoTimeout bounds the whole demo: a sample archive of a few MiB is
// vaulted in well under a second, so a minute means something is wrong.
const demoTimeout = time.Minute

// demoMemoryBytes is the size of the sample checkpoint's memory pages.
const demoMemoryBytes = 8 << 20

// runDevDemo sets up dir as `ckvault dev` does, runs the daemon in this
// process with its log in dir/daemon.log, runs the demo against it, and
// stops the daemon cleanly (drained, "stopped" recorded) before returning.
func runDevDemo(ctx context.Context, stdout, stderr io.Writer, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dev: creating %s: %w", dir, err)
	}
	logPath := filepath.Join(dir, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("dev: opening the daemon log: %w", err)
	}
	defer logf.Close()
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	h, err := startDevLogging(dctx, stdout, stderr, logf, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Daemon running on %s (log: %s)\n", h.Dir, logPath)
	demoErr := runDemo(ctx, stdout, h)
	stop()
	if err := <-h.Done; err != nil && demoErr == nil {
		return fmt.Errorf("dev: stopping the daemon: %w", err)
	}
	return demoErr
}

// runDemo takes one generated checkpoint through the whole journey on a
// running dev daemon: drop it as the runtime would, wait until it is
// vaulted and the local copy shredded, then list, verify, fetch (comparing
// the result byte for byte with the original), inspect it, and print the
// audit trail of it all and its verification. Any deviation is an error.
func runDemo(ctx context.Context, w io.Writer, h *devHandle) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	start := time.Now().UTC().Truncate(time.Second)
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n==> "+format+"\n", args...) }

	// 1. A sample checkpoint in the CRI-O layout, written in place into the
	// watched directory the way the runtimes write it (0600, no rename).
	opts := samplearchive.Options{
		Engine:         samplearchive.CRIO,
		Namespace:      "demo",
		Pod:            "web-7d4b9c-x2k8p",
		Container:      "web",
		Image:          "registry.example/web:1.4",
		MemoryBytes:    demoMemoryBytes,
		CheckpointedAt: start,
		Seed:           start.UnixNano(),
	}
	var archive bytes.Buffer
	if err := samplearchive.Write(&archive, opts); err != nil {
		return fmt.Errorf("demo: generating the sample checkpoint: %w", err)
	}
	sum := sha256.Sum256(archive.Bytes())
	name := samplearchive.Filename(opts)
	path := filepath.Join(h.Config.CheckpointsDir, name)
	step("Dropping a sample checkpoint (%s, sha256 %s…) into %s", humanBytes(int64(archive.Len())), hex.EncodeToString(sum[:6]), path)
	if err := writeInPlace(path, archive.Bytes()); err != nil {
		return fmt.Errorf("demo: writing %s: %w", path, err)
	}

	// 2. The daemon vaults it: seal, upload, prove, audit, shred.
	p, err := h.Daemon.WaitVaulted(ctx, name)
	if err != nil {
		return fmt.Errorf("demo: waiting for %s to be vaulted: %w", name, err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		return fmt.Errorf("demo: %s was vaulted (%s) but the local copy is still there", path, p.Stage)
	}
	fmt.Fprintf(w, "vaulted as %s (stage %s); the local copy is gone\n", p.Object, p.Stage)

	// 3. A responder's view, in-process: the daemon holds the audit trail,
	// so the responder records its reads through the daemon's log.
	st, err := storeconfig.Open(h.Config.Store, slog.Default())
	if err != nil {
		return err
	}
	tk, err := trustedKeys(h.Config)
	if err != nil {
		return err
	}
	r := &responder.Responder{Store: st, Trusted: tk, Audit: h.Daemon.Audit(), Actor: localActor()}

	step("ckvault list")
	ents, err := r.List(ctx, responder.ListOptions{Namespace: opts.Namespace, Pod: opts.Pod, Since: start})
	if err != nil {
		return fmt.Errorf("demo: list: %w", err)
	}
	var id string
	for _, e := range ents {
		fmt.Fprintf(w, "%s  %s  %s\n", termsafe.String(e.ID), e.Checkpointed().Format(time.RFC3339),
			termsafe.String(e.Namespace()+"/"+e.Pod()+"/"+e.Container()+"  node "+e.Node()+"  "+e.Base))
		if e.Base == p.Object {
			id = e.ID
		}
	}
	if id == "" {
		return fmt.Errorf("demo: %s is not in the listing of %s", p.Object, st.Describe())
	}

	step("ckvault verify %s", id)
	rep, err := r.Verify(ctx, id)
	if err != nil {
		return fmt.Errorf("demo: verify: %w", err)
	}
	for _, c := range rep.Checks {
		fmt.Fprintf(w, "  ok  %s\n", c)
	}

	step("ckvault fetch %s -i %s", id, h.Config.Identities[0])
	ids, err := envelope.LoadIdentities(h.Config.Identities, envelope.IdentityOptions{PluginDir: h.Config.PluginDir})
	if err != nil {
		return fmt.Errorf("demo: loading the responder identity: %w", err)
	}
	outDir := filepath.Join(h.Dir, "fetched")
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	out := filepath.Join(outDir, name)
	if _, err := r.Fetch(ctx, id, out, responder.FetchOptions{Identities: ids}); err != nil {
		return fmt.Errorf("demo: fetch: %w", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return fmt.Errorf("demo: reading the fetched archive: %w", err)
	}
	if !bytes.Equal(got, archive.Bytes()) {
		return fmt.Errorf("demo: the fetched archive %s differs from the original", out)
	}
	fmt.Fprintf(w, "fetched to %s: byte-identical to the original (sha256 %s)\n", out, hex.EncodeToString(sum[:]))

	step("ckvault inspect %s", id)
	ins, err := r.Inspect(ctx, id, responder.InspectOptions{FetchOptions: responder.FetchOptions{Identities: ids}})
	if err != nil {
		return fmt.Errorf("demo: inspect: %w", err)
	}
	printInspection(w, ins)

	if err := demoService(ctx, w, step, h, tk, id, p.Object, out, archive.Bytes(), start); err != nil {
		return err
	}

	step("ckvault audit query --since %s", start.Format(time.RFC3339))
	log := h.Daemon.Audit()
	recs, err := recordsSince(ctx, log, start)
	if err != nil {
		return fmt.Errorf("demo: audit query: %w", err)
	}
	if err := printRecords(w, "table", recs); err != nil {
		return err
	}

	step("ckvault audit verify")
	if _, err := log.SignHead(ctx); err != nil {
		return fmt.Errorf("demo: signing the audit head: %w", err)
	}
	vr, err := log.Verify(ctx, nil)
	if err != nil {
		return fmt.Errorf("demo: audit verify: %w", err)
	}
	if f, bad := vr.FirstBad(); bad {
		return fmt.Errorf("%w: demo: audit record %d: %s", errVerification, f.Seq, f.Problem)
	}
	fmt.Fprintf(w, "audit trail verifies: %d records, %d signed heads, the newest covering seq %d\n", vr.Records, vr.Heads, vr.LastSigned)

	fmt.Fprintf(w, "\nDemo complete. Everything is under %s; run `ckvault dev --dir %s` to keep the daemon running,\nand `ckvault serve --config %s` beside it for the vault service.\n",
		h.Dir, h.Dir, filepath.Join(h.Dir, devServeConfigName))
	return nil
}

// demoService starts the vault service of the dev setup (serve.yaml) in
// this process and reads the checkpoint through it as the dev responder,
// whose laptop would hold no store credentials: list, then fetch (verified
// here, against the trusted key, not the service's word). The auditor's
// certificate may not fetch: a 403, recorded like every request. Then it
// prints the service's own trail.
func demoService(ctx context.Context, w io.Writer, step func(string, ...any), h *devHandle, tk *signing.TrustedKeys,
	id, base, fetched string, original []byte, start time.Time) error {
	servePath := filepath.Join(h.Dir, devServeConfigName)
	cfg, err := policy.Load(servePath)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg.Serve.Listen = "127.0.0.1:0" // beside a `ckvault serve` you may run on its port
	sctx, stop := context.WithCancel(ctx)
	srv, err := startService(sctx, cfg, false, h.Log)
	if err != nil {
		stop()
		return fmt.Errorf("demo: starting the vault service: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(sctx) }()
	defer func() { stop(); <-done }()

	url := "https://" + srv.Addr
	pki := func(name, ext string) string { return devPKIFile(h.Dir, name, ext) }
	flags := func(who string) string {
		rel := func(p string) string { r, _ := filepath.Rel(h.Dir, p); return r }
		return fmt.Sprintf("--server %s --ca %s --cert %s --key %s", url, rel(pki(devCAName, ".crt")), rel(pki(who, ".crt")), rel(pki(who, ".key")))
	}
	client := func(who string) (*responder.Responder, error) {
		rs, err := remote.New(remote.Config{Server: url, CAFile: pki(devCAName, ".crt"), CertFile: pki(who, ".crt"), KeyFile: pki(who, ".key")})
		if err != nil {
			return nil, err
		}
		// The service records every read itself, before its first byte.
		return &responder.Responder{Store: rs, Trusted: tk, Audit: serviceAudited{}, Actor: localActor()}, nil
	}
	step("ckvault serve --config %s   (the vault service, here in this process, on %s: %d checkpoints indexed)", servePath, url, srv.Index.Len())

	r, err := client(devResponder)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	step("ckvault list %s", flags(devResponder))
	ents, err := r.List(ctx, responder.ListOptions{Namespace: "demo", Since: start})
	if err != nil {
		return fmt.Errorf("demo: list through the service: %w", err)
	}
	found := false
	for _, e := range ents {
		fmt.Fprintf(w, "%s  %s  %s\n", termsafe.String(e.ID), e.Checkpointed().Format(time.RFC3339), termsafe.String(e.Base))
		found = found || e.ID == id
	}
	if !found {
		return fmt.Errorf("demo: %s is not in the service's listing", id)
	}

	step("ckvault fetch %s %s", id, flags(devResponder))
	ids, err := envelope.LoadIdentities(h.Config.Identities, envelope.IdentityOptions{PluginDir: h.Config.PluginDir})
	if err != nil {
		return fmt.Errorf("demo: loading the responder identity: %w", err)
	}
	out := fetched + ".via-service"
	if _, err := r.Fetch(ctx, id, out, responder.FetchOptions{Identities: ids}); err != nil {
		return fmt.Errorf("demo: fetch through the service: %w", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if !bytes.Equal(got, original) {
		return fmt.Errorf("demo: %s, fetched through the service, differs from the original", out)
	}
	fmt.Fprintf(w, "fetched to %s: byte-identical, checked here against %s, not on the service's word\n", out, h.Config.Signing.PublicKey)

	// The auditor may read the trail, not checkpoints: a listing holds
	// only what its caller may see, and the ciphertext itself is refused.
	step("ckvault list %s   (the auditor may read the trail, not checkpoints)", flags(devAuditor))
	a, err := client(devAuditor)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if ents, err := a.List(ctx, responder.ListOptions{Namespace: "demo", Since: start}); err != nil || len(ents) != 0 {
		return fmt.Errorf("demo: the auditor's listing holds %d checkpoints (%v), want none", len(ents), err)
	}
	fmt.Fprintln(w, "(nothing: a listing holds only what its caller may see)")
	key := base + manifest.SuffixCiphertext
	step("GET %s%s/objects/%s as %s", url, remote.APIVersion, key, devAuditor)
	_, err = a.Store.Open(ctx, key)
	var se *remote.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		return fmt.Errorf("demo: the auditor's read of %s was not refused with 403: %v", key, err)
	}
	fmt.Fprintf(w, "refused: %s\n", termsafe.String(se.Error()))

	step("the vault service's audit trail (each request recorded before its first byte, its outcome after)")
	recs, err := recordsSince(ctx, srv.Trail, start)
	if err != nil {
		return fmt.Errorf("demo: the service's audit trail: %w", err)
	}
	return printRecords(w, "table", recs)
}

// recordsSince is every record of a trail from start on, page by page.
func recordsSince(ctx context.Context, l *audit.Log, start time.Time) ([]audit.Record, error) {
	var recs []audit.Record
	for f := (audit.Filter{Since: start, Limit: audit.MaxLimit}); ; {
		page, err := l.Query(ctx, f)
		if err != nil {
			return nil, err
		}
		recs = append(recs, page.Records...)
		if page.Next == "" {
			return recs, nil
		}
		f.Cursor = page.Next
	}
}

// writeInPlace writes data to a new file at path in pieces, as CRI-O and
// containerd do: the final name, mode 0600, no temporary file.
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if _, err := f.Write(data[:n]); err != nil {
			f.Close()
			return err
		}
		data = data[n:]
	}
	return f.Close()
}
