package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
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

	step("ckvault audit query --since %s", start.Format(time.RFC3339))
	log := h.Daemon.Audit()
	var recs []audit.Record
	for f := (audit.Filter{Since: start, Limit: audit.MaxLimit}); ; {
		page, err := log.Query(ctx, f)
		if err != nil {
			return fmt.Errorf("demo: audit query: %w", err)
		}
		recs = append(recs, page.Records...)
		if page.Next == "" {
			break
		}
		f.Cursor = page.Next
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

	fmt.Fprintf(w, "\nDemo complete. Everything is under %s; run `ckvault dev --dir %s` to keep the daemon running.\n", h.Dir, h.Dir)
	return nil
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
