package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// TestFailClosedDiskFull runs the `ckvault serve` binary and makes the disk
// under its audit trail refuse to grow while it serves. Every answer must
// then be either served in full with its intent record in the trail, or a
// 503 that carries nothing but the error (not one byte of a listing, a
// manifest, a ciphertext or the trail) — for list, get, fetch, the audit
// endpoints and a denial alike; and once the disk has room again the
// service answers again, without a restart.
//
// Two ways to fill the disk:
//   - fsize: RLIMIT_FSIZE on the running service (prlimit), set to its
//     trail's size: the kernel refuses every write that would grow a file
//     (EFBIG), as a full disk refuses it (ENOSPC). It needs no privilege,
//     so it runs everywhere, CI included.
//   - tmpfs: the state directory on a 16 MiB tmpfs, filled with a filler
//     file until ENOSPC — a real full file system. Mounting needs root (or
//     CAP_SYS_ADMIN); without it this case is skipped, the fsize case
//     covering the same path.
func TestFailClosedDiskFull(t *testing.T) {
	bin := buildCkvault(t)
	for _, method := range []string{"fsize", "tmpfs"} {
		t.Run(method, func(t *testing.T) {
			// No rate limit in the way of the requests it takes to fill the disk.
			e := newEnv(t, envOptions{backend: "file", noStart: true, memoryBytes: 256 << 10, serveExtra: "  rateLimit: 10000\n  rateBurst: 10000\n"})
			stateDir := e.cfg.StateDir
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if method == "tmpfs" {
				if err := unix.Mount("tmpfs", stateDir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
					t.Skipf("cannot mount a tmpfs at %s (%v): needs root or CAP_SYS_ADMIN; the fsize case covers this unprivileged", stateDir, err)
				}
				// Registered before the service starts, so it runs after
				// the service is killed.
				t.Cleanup(func() { unix.Unmount(stateDir, unix.MNT_DETACH) })
			}
			p := startServe(t, bin, e.cfgPath, 2*time.Minute)
			e.addr = p.addr
			trailPath := audit.Path(filepath.Join(stateDir, StateSubdir))

			ctx := context.Background()
			pay := e.vaulted["payments"][0].Object
			ct, err := testvault.GetBytes(ctx, e.st, pay+manifest.SuffixCiphertext)
			if err != nil {
				t.Fatal(err)
			}
			man, err := testvault.GetBytes(ctx, e.st, pay+manifest.SuffixManifest)
			if err != nil {
				t.Fatal(err)
			}
			alice, auditor, nobody := e.client("alice"), e.client("auditor"), e.client("nobody")
			type req struct {
				name, action string
				c            *http.Client
				path         string
				want         int // when served
				content      []byte
			}
			reqs := []req{
				{"list", "listed", alice, "/v1/checkpoints?namespace=payments", 200, []byte(`"items"`)},
				{"get entry", "got", alice, "/v1/checkpoints/" + pay, 200, man[:64]},
				{"get manifest", "got", alice, "/v1/objects/" + pay + manifest.SuffixManifest, 200, man[:64]},
				{"fetch", "fetched", alice, "/v1/objects/" + pay + manifest.SuffixCiphertext, 200, ct[:64]},
				{"audit records", "queried", auditor, "/v1/audit/records?limit=5", 200, []byte(`"records"`)},
				{"audit segments", "listed", auditor, "/v1/audit/segments", 200, []byte(`"items"`)},
				{"audit verify", "verified", auditor, "/v1/audit/verify", 200, []byte(`"heads"`)},
				{"denied list", "denied", nobody, "/v1/checkpoints?namespace=payments", 403, nil},
			}
			served := map[string]int{} // action -> answers that needed a record
			check := func(r req) int {
				t.Helper()
				a := e.get(r.c, r.path)
				switch a.code {
				case r.want:
					served[r.action]++
					if r.name == "fetch" && !bytes.Equal(a.body, ct) {
						t.Errorf("%s: served %d bytes that are not the ciphertext", r.name, len(a.body))
					}
				case http.StatusServiceUnavailable:
					var body remote.Error
					dec := json.NewDecoder(bytes.NewReader(a.body))
					dec.DisallowUnknownFields()
					if err := dec.Decode(&body); err != nil || !strings.Contains(body.Error, "audit trail") || len(a.body) > 2048 {
						t.Errorf("%s: 503 body is not the audit error alone (%v): %.300q", r.name, err, a.body)
					}
					if r.content != nil && bytes.Contains(a.body, r.content) {
						t.Errorf("%s: the 503 carries content", r.name)
					}
					if a.hdr.Get("Retry-After") == "" {
						t.Errorf("%s: 503 without Retry-After", r.name)
					}
				default:
					t.Errorf("%s: %d %.300s, want %d or 503", r.name, a.code, a.body, r.want)
				}
				return a.code
			}
			for _, r := range reqs {
				if code := check(r); code != r.want {
					t.Fatalf("%s before the disk filled: %d", r.name, code)
				}
			}

			// Fill the disk.
			var restore func()
			switch method {
			case "fsize":
				fi, err := os.Stat(trailPath)
				if err != nil {
					t.Fatal(err)
				}
				pid := p.cmd.Process.Pid
				lim := unix.Rlimit{Cur: uint64(fi.Size()), Max: unix.RLIM_INFINITY}
				if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
					t.Fatalf("prlimit RLIMIT_FSIZE on ckvault serve (pid %d): %v", pid, err)
				}
				restore = func() {
					if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}, nil); err != nil {
						t.Fatal(err)
					}
				}
			case "tmpfs":
				filler := filepath.Join(stateDir, "filler")
				fillDisk(t, filler)
				restore = func() {
					if err := os.Remove(filler); err != nil {
						t.Fatal(err)
					}
				}
			}

			// Requests until every kind has been refused a few times; a
			// commit that fits in pages bbolt freed earlier may still
			// succeed now and then, as on a real full disk.
			refused := map[string]int{}
			for i := 0; i < 3000; i++ {
				r := reqs[i%len(reqs)]
				if check(r) == http.StatusServiceUnavailable {
					refused[r.name]++
				}
				done := true
				for _, r := range reqs {
					done = done && refused[r.name] >= 3
				}
				if done || t.Failed() {
					break
				}
			}
			for _, r := range reqs {
				if refused[r.name] < 3 {
					t.Errorf("%s: refused %d times with the disk full, want every kind refused", r.name, refused[r.name])
				}
			}
			if !strings.Contains(string(e.get(alice, "/metrics").body), "ckvault_serve_audit_failures_total") {
				t.Error("/metrics lacks ckvault_serve_audit_failures_total")
			}

			// Room again: served again, no restart.
			restore()
			for _, r := range reqs {
				var code int
				for try := 0; try < 50; try++ {
					if code = check(r); code == r.want {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				if code != r.want {
					t.Errorf("%s after the disk has room again: %d, want %d", r.name, code, r.want)
				}
			}

			// Every answer that was served (or denied) has its record.
			p.stop(t)
			trail, err := audit.OpenReadOnly(trailPath)
			if err != nil {
				t.Fatal(err)
			}
			defer trail.Close()
			recorded := map[string]int{}
			f := audit.Filter{Limit: audit.MaxLimit}
			for {
				pg, err := trail.Query(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				for _, rec := range pg.Records {
					if rec.Detail["phase"] == "intent" || rec.Action == "denied" {
						recorded[rec.Action]++
					}
				}
				if pg.Next == "" {
					break
				}
				f.Cursor = pg.Next
			}
			for action, n := range served {
				if recorded[action] < n {
					t.Errorf("%s: %d answers served, only %d intent records in the trail", action, n, recorded[action])
				}
			}
			t.Logf("served %v; refused %v; records %v", served, refused, recorded)
		})
	}
}

// fillDisk writes name until its file system is full (ENOSPC).
func fillDisk(t *testing.T, name string) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling %s: %v", name, err)
				}
				break
			}
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
}
