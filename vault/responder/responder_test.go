package responder

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// TestFetchRoundTrip fetches vaulted CRI-O and containerd archives back from
// every store and checks that they are byte-identical to the originals and
// that the real checkpointctl says the same about both.
func TestFetchRoundTrip(t *testing.T) {
	ctl := testtools.Path(t, "checkpointctl")
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t, backend)
			for _, tt := range []samplearchive.Options{
				{Engine: samplearchive.CRIO, Namespace: "payments", Pod: "api-0", Container: "server", MemoryBytes: 3<<20 + 17},
				{Engine: samplearchive.Containerd, Namespace: "payments", Pod: "api-1", Container: "server", DotSlash: true, MemoryBytes: 1 << 20},
			} {
				t.Run(tt.Engine.String(), func(t *testing.T) {
					orig, m := e.vault(t, tt)
					outDir := t.TempDir()
					out := filepath.Join(outDir, filepath.Base(orig))
					got, err := e.r.Fetch(t.Context(), idOf(m.Object), out, FetchOptions{Identities: []age.Identity{e.keys.Identity}})
					if err != nil {
						t.Fatal(err)
					}
					if got.Object != m.Object {
						t.Errorf("fetched %s, want %s", got.Object, m.Object)
					}
					a, _ := os.ReadFile(orig)
					b, err := os.ReadFile(out)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(a, b) {
						t.Fatalf("fetched archive differs from the original (%d vs %d bytes)", len(b), len(a))
					}
					if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
						t.Errorf("output mode %v, want 0600", fi.Mode().Perm())
					}
					noDebris(t, outDir, filepath.Base(out))
					for _, args := range [][]string{{"show"}, {"inspect"}, {"inspect", "--stats"}} {
						want := runIn(t, filepath.Dir(orig), ctl, append(args, filepath.Base(orig))...)
						have := runIn(t, outDir, ctl, append(args, filepath.Base(out))...)
						if want != have {
							t.Errorf("checkpointctl %s differs:\noriginal:\n%s\nfetched:\n%s", strings.Join(args, " "), want, have)
						}
					}

					ins, err := e.r.Inspect(t.Context(), m.Object, InspectOptions{FetchOptions: FetchOptions{Identities: []age.Identity{e.keys.Identity}}})
					if err != nil {
						t.Fatal(err)
					}
					if !ins.Verified || ins.Info.Identity.Pod != tt.Pod || ins.Info.PagesBytes != tt.MemoryBytes {
						t.Errorf("inspect: verified %v, pod %q, pages %d; want true, %q, %d", ins.Verified, ins.Info.Identity.Pod, ins.Info.PagesBytes, tt.Pod, tt.MemoryBytes)
					}

					rep, err := e.r.Verify(t.Context(), idOf(m.Object)[:6])
					if err != nil {
						t.Fatal(err)
					}
					if len(rep.Checks) != 5 || rep.SignedBy == "" {
						t.Errorf("verify report %+v", rep)
					}
				})
			}
			// Every read was audited, intent and outcome.
			for _, action := range []string{"fetched", "inspected", "verified"} {
				recs := e.records(t, action)
				if len(recs) != 4 {
					t.Errorf("%d %q records, want 4 (2 intents, 2 outcomes)", len(recs), action)
				}
				for _, r := range recs {
					if r.Outcome != audit.OK || r.Actor != e.r.Actor || !strings.Contains(r.Subject, "/payments/") && !strings.HasPrefix(r.Subject, "payments/") {
						t.Errorf("record %+v", r)
					}
				}
			}
		})
	}
}

func runIn(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v in %s: %v\n%s", filepath.Base(bin), args, dir, err, out)
	}
	return string(out)
}

// TestTamper refuses every kind of tampering with the failing check named,
// leaves no output or temporary file, and records the denial.
func TestTamper(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t, backend)
			ctx := context.Background()
			get := func(key string) []byte {
				b, err := testvault.GetBytes(ctx, e.st, key)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			put := func(key string, b []byte) {
				if err := testvault.PutBytes(ctx, e.st, key, b); err != nil {
					t.Fatal(err)
				}
			}
			_, other := e.vault(t, samplearchive.Options{Pod: "other-0", Seed: 99})
			oo := other.Objects()

			seed := int64(0)
			for _, tt := range []struct {
				name  string
				check string
				do    func(m *manifest.Manifest) *manifest.Manifest
			}{
				{"ciphertext byte flipped", CheckCiphertext, func(m *manifest.Manifest) *manifest.Manifest {
					b := get(m.Objects().Ciphertext)
					b[len(b)/2] ^= 1
					put(m.Objects().Ciphertext, b)
					return m
				}},
				{"ciphertext header byte flipped", CheckCiphertext, func(m *manifest.Manifest) *manifest.Manifest {
					b := get(m.Objects().Ciphertext)
					b[40] ^= 1
					put(m.Objects().Ciphertext, b)
					return m
				}},
				{"manifest edited", CheckManifestSignature, func(m *manifest.Manifest) *manifest.Manifest {
					b := get(m.Objects().Manifest)
					b = bytes.Replace(b, []byte(`"toolVersion": "testvault"`), []byte(`"toolVersion": "testvaulu"`), 1)
					put(m.Objects().Manifest, b)
					return m
				}},
				{"manifest signature swapped", CheckManifestSignature, func(m *manifest.Manifest) *manifest.Manifest {
					put(m.Objects().ManifestSig, get(oo.ManifestSig))
					put(m.Objects().ManifestBundle, get(oo.ManifestBundle))
					return m
				}},
				{"ciphertext signature swapped", CheckCiphertextSignature, func(m *manifest.Manifest) *manifest.Manifest {
					put(m.Objects().CiphertextSig, get(oo.CiphertextSig))
					return m
				}},
				{"manifest of another checkpoint", CheckKeyBinding, func(m *manifest.Manifest) *manifest.Manifest {
					put(m.Objects().Manifest, get(oo.Manifest))
					put(m.Objects().ManifestSig, get(oo.ManifestSig))
					put(m.Objects().ManifestBundle, get(oo.ManifestBundle))
					return m
				}},
				{"untrusted signing key", CheckManifestSignature, nil},
				{"truncated ciphertext", CheckCiphertext, func(m *manifest.Manifest) *manifest.Manifest {
					b := get(m.Objects().Ciphertext)
					put(m.Objects().Ciphertext, b[:len(b)-envelope.ChunkSize/2])
					return m
				}},
				{"unsigned", CheckManifestSignature, func(m *manifest.Manifest) *manifest.Manifest {
					if err := e.st.Delete(ctx, m.Objects().ManifestSig, ""); err != nil {
						t.Fatal(err)
					}
					if err := e.st.Delete(ctx, m.Objects().ManifestBundle, ""); err != nil {
						t.Fatal(err)
					}
					return m
				}},
			} {
				t.Run(tt.name, func(t *testing.T) {
					seed++
					opts := samplearchive.Options{Pod: "victim-0", Seed: seed, MemoryBytes: 256 << 10}
					var m *manifest.Manifest
					if tt.do == nil {
						// Vaulted by a key the responder does not trust.
						k2, err := testvault.NewKeys(t.TempDir(), false)
						if err != nil {
							t.Fatal(err)
						}
						p, err := samplearchive.WriteDir(t.TempDir(), opts)
						if err != nil {
							t.Fatal(err)
						}
						if m, _, err = testvault.Put(ctx, e.st, &testvault.Keys{Signer: k2.Signer, Recipients: e.keys.Recipients}, p, "node-a"); err != nil {
							t.Fatal(err)
						}
					} else {
						_, m = e.vault(t, opts)
						tt.do(m)
					}
					id := idOf(m.Object)

					_, err := e.r.Verify(ctx, id)
					if got := checkName(err); got != tt.check || !errors.Is(err, ErrVerification) {
						t.Errorf("verify: check %q (%v), want %q", got, err, tt.check)
					}
					outDir := t.TempDir()
					out := filepath.Join(outDir, "out.tar")
					_, err = e.r.Fetch(ctx, id, out, FetchOptions{Identities: []age.Identity{e.keys.Identity}})
					if got := checkName(err); got != tt.check {
						t.Errorf("fetch: check %q (%v), want %q", got, err, tt.check)
					}
					noDebris(t, outDir)
					_, err = e.r.Inspect(ctx, id, InspectOptions{FetchOptions: FetchOptions{Identities: []age.Identity{e.keys.Identity}}})
					if got := checkName(err); got != tt.check {
						t.Errorf("inspect: check %q (%v), want %q", got, err, tt.check)
					}

					// List shows it, flagged, when the manifest is the problem.
					ents, err := e.r.List(ctx, ListOptions{Pod: "victim-0"})
					if err != nil {
						t.Fatal(err)
					}
					found := false
					for _, en := range ents {
						if en.Base == m.Object {
							found = true
							manifestBad := tt.check == CheckManifestSignature || tt.check == CheckKeyBinding
							if manifestBad != (en.Problem != nil) {
								t.Errorf("list: problem %v for %s", en.Problem, tt.name)
							}
						}
					}
					if !found {
						t.Errorf("list dropped %s", m.Object)
					}

					// The denial is in the trail with the check's name.
					var denied int
					for _, r := range e.records(t, "denied") {
						if r.Subject == m.Object && r.Outcome == audit.Denied && r.Detail["check"] == tt.check {
							denied++
						}
					}
					if denied != 3 {
						t.Errorf("%d denial records for %s naming %q, want 3 (verify, fetch, inspect)", denied, m.Object, tt.check)
					}
				})
			}
		})
	}
}

// TestWrongIdentity names who the checkpoint was sealed to.
func TestWrongIdentity(t *testing.T) {
	e := newEnv(t, "file")
	_, m := e.vault(t, samplearchive.Options{})
	other, err := testvault.NewKeys(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.tar")
	_, err = e.r.Fetch(t.Context(), idOf(m.Object), out, FetchOptions{Identities: []age.Identity{other.Identity}})
	var wi *WrongIdentityError
	if !errors.As(err, &wi) {
		t.Fatalf("err = %v, want WrongIdentityError", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, m.Recipients[0]) || !strings.Contains(msg, envelope.Fingerprint(other.Recipient)) {
		t.Errorf("error does not name the sealed-to and given fingerprints: %s", msg)
	}
	if errors.Is(err, ErrVerification) {
		t.Error("a wrong identity is not a verification failure")
	}
	noDebris(t, filepath.Dir(out))
}

// TestFetchRefusesOverwrite keeps an existing output unless forced.
func TestFetchRefusesOverwrite(t *testing.T) {
	e := newEnv(t, "file")
	orig, m := e.vault(t, samplearchive.Options{})
	out := filepath.Join(t.TempDir(), "out.tar")
	if err := os.WriteFile(out, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	ids := []age.Identity{e.keys.Identity}
	if _, err := e.r.Fetch(t.Context(), idOf(m.Object), out, FetchOptions{Identities: ids}); !errors.Is(err, ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "keep" {
		t.Fatal("existing output was modified")
	}
	if _, err := e.r.Fetch(t.Context(), idOf(m.Object), out, FetchOptions{Identities: ids, Force: true}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(orig)
	if b, _ := os.ReadFile(out); !bytes.Equal(a, b) {
		t.Fatal("forced fetch did not replace the output")
	}
}

// failingAuditor refuses every record after the first n.
type failingAuditor struct {
	n    int
	recs []audit.Record
}

func (f *failingAuditor) Append(_ context.Context, r audit.Record) (uint64, error) {
	if len(f.recs) >= f.n {
		return 0, audit.ErrNotRecorded
	}
	f.recs = append(f.recs, r)
	return uint64(len(f.recs)), nil
}

// TestAuditFailsClosed: without a durable intent nothing is read; without a
// durable outcome the fetched file is destroyed, not published.
func TestAuditFailsClosed(t *testing.T) {
	e := newEnv(t, "file")
	_, m := e.vault(t, samplearchive.Options{})
	for _, n := range []int{0, 1} {
		fa := &failingAuditor{n: n}
		r := *e.r
		r.Audit = fa
		outDir := t.TempDir()
		_, err := r.Fetch(t.Context(), idOf(m.Object), filepath.Join(outDir, "out.tar"), FetchOptions{Identities: []age.Identity{e.keys.Identity}})
		if !errors.Is(err, audit.ErrNotRecorded) {
			t.Errorf("n=%d: err = %v, want ErrNotRecorded", n, err)
		}
		noDebris(t, outDir)
	}
	r := *e.r
	r.Audit = nil
	if _, err := r.List(t.Context(), ListOptions{}); err == nil {
		t.Error("list without an audit trail succeeded")
	}
}

// TestListAndResolve covers ordering, filters, ids, prefixes and ambiguity.
func TestListAndResolve(t *testing.T) {
	e := newEnv(t, "file")
	ctx := context.Background()
	var ms []*manifest.Manifest
	for i, o := range []samplearchive.Options{
		{Namespace: "a", Pod: "p1", Container: "c", CheckpointedAt: samplearchive.DefaultTime},
		{Namespace: "a", Pod: "p2", Container: "c", CheckpointedAt: samplearchive.DefaultTime.Add(time.Hour)},
		{Namespace: "b", Pod: "p1", Container: "d", CheckpointedAt: samplearchive.DefaultTime.Add(2 * time.Hour)},
	} {
		o.Seed = int64(i)
		_, m := e.vault(t, o)
		ms = append(ms, m)
	}
	// Two objects whose ids share a prefix: copies of a manifest under
	// made-up keys (their key binding fails, so they are flagged).
	mb, _ := testvault.GetBytes(ctx, e.st, ms[0].Objects().Manifest)
	for _, k := range []string{"a/p1/c/20260101T000000Z-node-a-abcd00000001", "a/p1/c/20260101T000000Z-node-a-abcd00000002"} {
		if err := testvault.PutBytes(ctx, e.st, k+manifest.SuffixManifest, mb); err != nil {
			t.Fatal(err)
		}
	}
	all, err := e.r.List(ctx, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		t.Fatalf("listed %d, want 5", len(all))
	}
	if all[0].Base != ms[2].Object || all[1].Base != ms[1].Object || all[2].Base != ms[0].Object {
		t.Errorf("not newest first: %s, %s, %s", all[0].Base, all[1].Base, all[2].Base)
	}
	for _, en := range all[3:] {
		if checkName(en.Problem) != CheckManifestSignature && checkName(en.Problem) != CheckKeyBinding {
			t.Errorf("%s: problem %v, want a key binding failure", en.Base, en.Problem)
		}
	}
	for _, tt := range []struct {
		opts ListOptions
		want int
	}{
		{ListOptions{Namespace: "a"}, 4},
		{ListOptions{Namespace: "a", Pod: "p2"}, 1},
		{ListOptions{Container: "d"}, 1},
		{ListOptions{Node: "node-a"}, 5},
		{ListOptions{Node: "node-b"}, 0},
		{ListOptions{Since: samplearchive.DefaultTime.Add(time.Hour)}, 2},
		{ListOptions{Until: samplearchive.DefaultTime.Add(time.Hour)}, 3},
	} {
		got, err := e.r.List(ctx, tt.opts)
		if err != nil || len(got) != tt.want {
			t.Errorf("List(%+v) = %d entries, %v; want %d", tt.opts, len(got), err, tt.want)
		}
	}
	id := idOf(ms[1].Object)
	for _, q := range []string{id, id[:MinIDLen], ms[1].Object, ms[1].Objects().Ciphertext} {
		if b, err := e.r.Resolve(ctx, q); err != nil || b != ms[1].Object {
			t.Errorf("Resolve(%q) = %q, %v", q, b, err)
		}
	}
	var amb *AmbiguousError
	if _, err := e.r.Resolve(ctx, "abcd"); !errors.As(err, &amb) || len(amb.Candidates) != 2 {
		t.Errorf("Resolve(abcd) = %v, want ambiguity between 2", err)
	}
	if _, err := e.r.Resolve(ctx, "ffffffff"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve(ffffffff) = %v, want ErrNotFound", err)
	}
	if _, err := e.r.Resolve(ctx, "ab"); err == nil {
		t.Error("a 2-character id was accepted")
	}
}

func TestParseBaseKey(t *testing.T) {
	for _, tt := range []struct {
		in   string
		ok   bool
		node string
	}{
		{"ns/pod/ctr/20260313T214306Z-node-a-0123456789ab", true, "node-a"},
		{"ns/pod/ctr/20260313T214306Z-n-0123456789ab", true, "n"},
		{"ns/pod/ctr/20260313T214306Z-0123456789ab", false, ""},
		{"ns/pod/20260313T214306Z-node-0123456789ab", false, ""},
		{"ns/pod/ctr/2026031XT214306Z-node-0123456789ab", false, ""},
		{"ns/pod/ctr/20260313T214306Z-node-0123456789AB", false, ""},
		{"ns/pod/ctr/20260313T214306Z-node-0123456789a", false, ""},
		{"", false, ""},
	} {
		p, ok := ParseBaseKey(tt.in)
		if ok != tt.ok || p.Node != tt.node {
			t.Errorf("ParseBaseKey(%q) = %+v, %v", tt.in, p, ok)
		}
	}
}

func FuzzParseBaseKey(f *testing.F) {
	f.Add("ns/pod/ctr/20260313T214306Z-node-a-0123456789ab")
	f.Add("a/b/c/d")
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := ParseBaseKey(s)
		if ok && (p.ShortID == "" || !strings.HasSuffix(s, "-"+p.ShortID) || !strings.HasPrefix(s, p.Namespace+"/")) {
			t.Errorf("ParseBaseKey(%q) = %+v", s, p)
		}
	})
}

// TestInspectUnverified shows a damaged checkpoint only when asked, and
// marks it.
func TestInspectUnverified(t *testing.T) {
	e := newEnv(t, "file")
	_, m := e.vault(t, samplearchive.Options{MemoryBytes: 512 << 10})
	b, _ := testvault.GetBytes(t.Context(), e.st, m.Objects().Ciphertext)
	b[len(b)-100] ^= 1 // in the last chunk: the archive itself parses
	testvault.PutBytes(t.Context(), e.st, m.Objects().Ciphertext, b)
	ids := FetchOptions{Identities: []age.Identity{e.keys.Identity}}
	if _, err := e.r.Inspect(t.Context(), idOf(m.Object), InspectOptions{FetchOptions: ids}); checkName(err) != CheckCiphertext {
		t.Fatalf("inspect of a damaged object: %v", err)
	}
	ins, err := e.r.Inspect(t.Context(), idOf(m.Object), InspectOptions{FetchOptions: ids, AllowUnverified: true})
	if err != nil {
		t.Fatal(err)
	}
	if ins.Verified || checkName(ins.Problem) != CheckCiphertext {
		t.Errorf("verified %v, problem %v; want false and a ciphertext digest failure", ins.Verified, ins.Problem)
	}
}
