package restore_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testregistry"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/restore"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
)

func TestMain(m *testing.M) {
	testregistry.ServeIfChild()
	os.Exit(m.Run())
}

// fixture is a file-store vault with one checkpoint, a responder with an
// audit trail, and a private temporary directory for Restore.
type fixture struct {
	archive string
	m       *manifest.Manifest
	st      *filestore.Store
	keys    *testvault.Keys
	log     *audit.Log
	r       *responder.Responder
	tmp     string
}

func newFixture(t testing.TB, opts samplearchive.Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := samplearchive.WriteDir(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := testvault.Put(context.Background(), st, keys, p, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(filepath.Join(dir, "state", audit.FileName), audit.Options{Node: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	return &fixture{archive: p, m: m, st: st, keys: keys, log: log, tmp: tmp,
		r: &responder.Responder{Store: st, Trusted: keys.Trusted, Audit: log, Actor: "uid:1000(test)@laptop"}}
}

func (f *fixture) id() string {
	kp, _ := responder.ParseBaseKey(f.m.Object)
	return kp.ShortID
}

// restore runs Restore with publish, and checks that the temporary
// directory is empty afterwards whatever happened.
func (f *fixture) restore(t testing.TB, publish responder.Publisher) (*manifest.Manifest, error) {
	t.Helper()
	m, err := f.r.Restore(context.Background(), f.id(), responder.RestoreOptions{
		FetchOptions: responder.FetchOptions{Identities: []age.Identity{f.keys.Identity}},
		TempDir:      f.tmp,
		Publish:      publish,
	})
	ents, rerr := os.ReadDir(f.tmp)
	if rerr != nil || len(ents) != 0 {
		t.Errorf("temporary directory after restore: %v %v (want empty)", ents, rerr)
	}
	return m, err
}

func pushTo(ref string, opts restore.PushOptions, res *restore.Result) responder.Publisher {
	return func(ctx context.Context, m *manifest.Manifest, archive io.ReaderAt) (map[string]string, error) {
		if err := restore.CheckMembers(io.NewSectionReader(archive, 0, m.Plaintext.Size)); err != nil {
			return nil, err
		}
		idx, err := restore.Build(m, archive, v1.Platform{})
		if err != nil {
			return nil, err
		}
		tag, err := restore.ParseReference(ref, opts.AllowHTTP)
		if err != nil {
			return nil, err
		}
		*res, err = restore.Push(ctx, idx, tag, opts)
		return res.AuditDetail(), err
	}
}

// crane runs the real crane binary against reg, trusting its CA and with
// its credentials, and returns standard output.
func crane(t testing.TB, reg *testregistry.Registry, args ...string) []byte {
	t.Helper()
	out, err := craneErr(t, reg, args...)
	if err != nil {
		t.Fatalf("crane %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func craneErr(t testing.TB, reg *testregistry.Registry, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(testtools.Path(t, "crane"), args...)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile, "DOCKER_CONFIG="+reg.DockerConfig)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, errors.New(err.Error() + ": " + stderr.String())
	}
	return out, nil
}

type ociManifest struct {
	MediaType   string            `json:"mediaType"`
	Annotations map[string]string `json:"annotations"`
	Manifests   []struct {
		Digest   string       `json:"digest"`
		Platform *v1.Platform `json:"platform"`
	} `json:"manifests"`
	Layers []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	} `json:"layers"`
}

func wantAnnotations(m *manifest.Manifest) map[string]string {
	return map[string]string{
		"io.kubernetes.cri-o.annotations.checkpoint.name": m.Container,
		"org.criu.checkpoint.container.name":              m.Container,
		"org.criu.checkpoint.pod.name":                    m.Pod,
		"org.criu.checkpoint.pod.namespace":               m.Namespace,
		"org.criu.checkpoint.engine.name":                 m.Checkpoint.Engine,
		"org.criu.checkpoint.runtime.name":                m.Checkpoint.Runtime,
		"org.criu.checkpoint.rootfsImageName":             m.Checkpoint.Image,
		"org.criu.checkpoint.rootfsImageID":               m.Checkpoint.ImageRef,
		"dev.ckvault.object":                              m.Object,
	}
}

func checkAnnotations(t *testing.T, what string, got map[string]string, m *manifest.Manifest) {
	t.Helper()
	for k, v := range wantAnnotations(m) {
		if v == "" {
			t.Fatalf("fixture lacks a value for %s", k)
		}
		if got[k] != v {
			t.Errorf("%s annotation %s = %q, want %q", what, k, got[k], v)
		}
	}
}

// members reads a tar into name (without "./") → content.
func members(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag == tar.TypeDir {
			name = strings.TrimSuffix(name, "/") + "/"
		}
		out[name] = b
	}
}

// TestRestorePush restores a CRI-O and a containerd checkpoint to a real
// registry over TLS with basic auth from a docker config, and reads the
// image back with stock crane: annotations on index and manifest, one
// uncompressed layer that is the archive byte for byte, and checkpointctl
// shows the same on the image's filesystem as on the original archive.
func TestRestorePush(t *testing.T) {
	craneBin := testtools.Path(t, "crane")
	_ = craneBin
	reg := testregistry.Start(t, testregistry.Options{User: "responder", Password: "s3cret"})
	t.Setenv("DOCKER_CONFIG", reg.DockerConfig) // what authn.DefaultKeychain reads
	for _, tc := range []struct {
		name string
		opts samplearchive.Options
	}{
		{"cri-o", samplearchive.Options{Engine: samplearchive.CRIO, Namespace: "payments", Pod: "api-0", Container: "server", MemoryBytes: 3 << 20}},
		{"containerd", samplearchive.Options{Engine: samplearchive.Containerd, Namespace: "web", Pod: "front-1", Container: "nginx", DotSlash: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.opts)
			ref := reg.Host + "/forensics/" + tc.name + ":" + f.id()
			var res restore.Result
			m, err := f.restore(t, pushTo(ref, restore.PushOptions{RootCAs: reg.Pool}, &res))
			if err != nil {
				t.Fatal(err)
			}
			// The index, as the tag resolves.
			var idx ociManifest
			if err := json.Unmarshal(crane(t, reg, "manifest", ref), &idx); err != nil {
				t.Fatal(err)
			}
			if idx.MediaType != "application/vnd.oci.image.index.v1+json" || len(idx.Manifests) != 1 {
				t.Fatalf("index: %+v", idx)
			}
			checkAnnotations(t, "index", idx.Annotations, m)
			if p := idx.Manifests[0].Platform; p == nil || p.OS != "linux" || p.Architecture != "amd64" {
				t.Errorf("index platform %+v, want linux/amd64", p)
			}
			if d := strings.TrimSpace(string(crane(t, reg, "digest", ref))); d != res.Digest.String() {
				t.Errorf("crane digest %s, Push reported %s", d, res.Digest)
			}
			// The manifest.
			var man ociManifest
			if err := json.Unmarshal(crane(t, reg, "manifest", reg.Host+"/forensics/"+tc.name+"@"+idx.Manifests[0].Digest), &man); err != nil {
				t.Fatal(err)
			}
			checkAnnotations(t, "manifest", man.Annotations, m)
			if len(man.Layers) != 1 || man.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar" ||
				man.Layers[0].Digest != "sha256:"+m.Plaintext.SHA256 || man.Layers[0].Size != m.Plaintext.Size {
				t.Fatalf("layers %+v, want one uncompressed tar layer sha256:%s of %d bytes", man.Layers, m.Plaintext.SHA256, m.Plaintext.Size)
			}
			// The layer blob is the archive; its members are the archive's.
			blob := crane(t, reg, "blob", reg.Host+"/forensics/"+tc.name+"@"+man.Layers[0].Digest)
			orig, err := os.ReadFile(f.archive)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(blob, orig) {
				t.Fatalf("layer blob (%d bytes) differs from the archive (%d bytes)", len(blob), len(orig))
			}
			// The image's filesystem, as a runtime unpacks it (crane
			// export flattens the layers), holds the same members.
			dir := t.TempDir()
			exported := filepath.Join(dir, "exported.tar")
			crane(t, reg, "export", ref, exported)
			ef, err := os.Open(exported)
			if err != nil {
				t.Fatal(err)
			}
			got := members(t, ef)
			ef.Close()
			want := members(t, bytes.NewReader(orig))
			if len(got) != len(want) {
				t.Errorf("exported image has %d members, archive %d", len(got), len(want))
			}
			for n, b := range want {
				if !bytes.Equal(got[n], b) {
					t.Errorf("member %s differs in the exported image", n)
				}
			}
			// checkpointctl reads the image's content as the original.
			ck := testtools.Path(t, "checkpointctl")
			show := func(p string) string {
				out, err := exec.Command(ck, "show", p).CombinedOutput()
				if err != nil {
					t.Fatalf("checkpointctl show %s: %v\n%s", p, err, out)
				}
				return strings.ReplaceAll(string(out), p, "ARCHIVE")
			}
			if a, b := show(f.archive), show(exported); a != b {
				t.Errorf("checkpointctl show differs:\noriginal:\n%s\nexported:\n%s", a, b)
			}
			// The audit trail has the restore, with where it went.
			recs := records(t, f.log, responder.ActionRestored)
			if len(recs) != 2 {
				t.Fatalf("%d restored records, want intent and outcome", len(recs))
			}
			d := recs[1].Detail
			if recs[1].Outcome != audit.OK || d["registry"] != reg.Host || d["repository"] != "forensics/"+tc.name ||
				d["imageDigest"] != res.Digest.String() || d["plaintextSha256"] != m.Plaintext.SHA256 {
				t.Errorf("outcome record %+v", recs[1])
			}
		})
	}
}

func records(t testing.TB, log *audit.Log, action string) []audit.Record {
	t.Helper()
	page, err := log.Query(context.Background(), audit.Filter{Action: action, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return page.Records
}

// TestRestoreTamperedNothingPushed: a vault object altered in the store is
// refused before anything reaches the publisher, and the registry has no
// such repository.
func TestRestoreTamperedNothingPushed(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	f := newFixture(t, samplearchive.Options{Engine: samplearchive.CRIO, MemoryBytes: 1 << 20})
	ct := f.m.Objects().Ciphertext
	b, err := testvault.GetBytes(context.Background(), f.st, ct)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := f.st.Delete(context.Background(), ct, ""); err != nil {
		t.Fatal(err)
	}
	if err := testvault.PutBytes(context.Background(), f.st, ct, b); err != nil {
		t.Fatal(err)
	}
	called := false
	var res restore.Result
	push := pushTo(reg.Host+"/forensics/tampered:x", restore.PushOptions{RootCAs: reg.Pool}, &res)
	_, err = f.restore(t, func(ctx context.Context, m *manifest.Manifest, a io.ReaderAt) (map[string]string, error) {
		called = true
		return push(ctx, m, a)
	})
	var ce *responder.CheckError
	if !errors.As(err, &ce) || ce.Check != responder.CheckCiphertext {
		t.Fatalf("restore of a tampered object: %v, want a ciphertext digest check failure", err)
	}
	if called {
		t.Fatal("the publisher ran for a tampered object")
	}
	if out, err := craneErr(t, reg, "ls", reg.Host+"/forensics/tampered"); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("registry holds tags after a refused restore: %s", out)
	}
	recs := records(t, f.log, "denied")
	if len(recs) != 1 || recs[0].Detail["request"] != responder.ActionRestored {
		t.Errorf("denied records %+v", recs)
	}
}

// TestPushTransport: plain HTTP is refused unless allowed, and a registry
// whose certificate the client cannot verify is refused.
func TestPushTransport(t *testing.T) {
	f := newFixture(t, samplearchive.Options{Engine: samplearchive.Containerd})
	plain := testregistry.Start(t, testregistry.Options{PlainHTTP: true})
	var res restore.Result
	_, err := f.restore(t, pushTo(plain.Host+"/x/y:z", restore.PushOptions{}, &res))
	if !errors.Is(err, restore.ErrPlainHTTP) {
		t.Fatalf("push to a plain HTTP registry: %v, want ErrPlainHTTP", err)
	}
	if _, err := f.restore(t, pushTo(plain.Host+"/x/y:z", restore.PushOptions{AllowHTTP: true}, &res)); err != nil {
		t.Fatalf("push with AllowHTTP: %v", err)
	}

	tlsReg := testregistry.Start(t, testregistry.Options{})
	_, err = f.restore(t, pushTo(tlsReg.Host+"/x/y:z", restore.PushOptions{}, &res))
	if !errors.Is(err, restore.ErrTLS) || !strings.Contains(err.Error(), "--registry-ca") {
		t.Fatalf("push to a registry with an unknown CA: %v, want ErrTLS naming --registry-ca", err)
	}
}

// TestWriteLayout writes the image as an OCI layout, which stock crane
// pushes as it is (its one entry, the index), and checks the layout's privacy.
func TestWriteLayout(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	f := newFixture(t, samplearchive.Options{Engine: samplearchive.CRIO})
	out := filepath.Join(t.TempDir(), "layout")
	var res restore.Result
	_, err := f.restore(t, func(ctx context.Context, m *manifest.Manifest, a io.ReaderAt) (map[string]string, error) {
		idx, err := restore.Build(m, a, v1.Platform{OS: "linux", Architecture: "arm64"})
		if err != nil {
			return nil, err
		}
		res, err = restore.WriteLayout(out, "evidence", idx)
		return res.AuditDetail(), err
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("layout dir: %v %v, want mode 0700", fi.Mode(), err)
	}
	ref := reg.Host + "/from/layout:evidence"
	crane(t, reg, "push", out, ref) // the layout's one entry: our index, as is
	var idx ociManifest
	if err := json.Unmarshal(crane(t, reg, "manifest", ref), &idx); err != nil {
		t.Fatal(err)
	}
	checkAnnotations(t, "index from layout", idx.Annotations, f.m)
	if d := strings.TrimSpace(string(crane(t, reg, "digest", ref))); d != res.Digest.String() {
		t.Errorf("pushed layout digest %s, WriteLayout reported %s", d, res.Digest)
	}
	if p := idx.Manifests[0].Platform; p == nil || p.Architecture != "arm64" {
		t.Errorf("platform %+v, want linux/arm64", p)
	}
	blob, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", f.m.Plaintext.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(blob)
	if hex.EncodeToString(sum[:]) != f.m.Plaintext.SHA256 {
		t.Error("layout layer blob is not the archive")
	}

	// A directory others can read is refused before anything is written.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o755)
	_, err = f.restore(t, func(ctx context.Context, m *manifest.Manifest, a io.ReaderAt) (map[string]string, error) {
		idx, err := restore.Build(m, a, v1.Platform{})
		if err != nil {
			return nil, err
		}
		_, err = restore.WriteLayout(open, "x", idx)
		return nil, err
	})
	if err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("layout into a 0755 directory: %v", err)
	}
	if ents, _ := os.ReadDir(open); len(ents) != 0 {
		t.Errorf("refused layout directory holds %d entries", len(ents))
	}
}

// TestLayerChanged: if the bytes behind the layer change after the digests
// were taken, neither a layout nor a registry receives them, and the
// layout keeps no partial blob.
func TestLayerChanged(t *testing.T) {
	f := newFixture(t, samplearchive.Options{Engine: samplearchive.CRIO})
	orig, err := os.ReadFile(f.archive)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Clone(orig)
	idx, err := restore.Build(f.m, bytes.NewReader(data), v1.Platform{})
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff // after Build, before the layer is read
	out := filepath.Join(t.TempDir(), "layout")
	if _, err := restore.WriteLayout(out, "x", idx); !errors.Is(err, restore.ErrLayerChanged) {
		t.Fatalf("WriteLayout of a changed archive: %v, want ErrLayerChanged", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the layout directory created for a failed write remains: %v", err)
	}

	reg := testregistry.Start(t, testregistry.Options{})
	tag, _ := restore.ParseReference(reg.Host+"/changed/x:y", false)
	_, err = restore.Push(context.Background(), idx, tag, restore.PushOptions{RootCAs: reg.Pool})
	if err == nil {
		t.Fatal("Push of a changed archive succeeded")
	}
	if _, err := craneErr(t, reg, "manifest", reg.Host+"/changed/x:y"); err == nil {
		t.Error("the registry has a manifest for a changed archive")
	}
}

func TestParseReference(t *testing.T) {
	for ref, ok := range map[string]bool{
		"registry.example/forensics/api:3f9c":                  true,
		"registry.example/forensics/api":                       true,
		"127.0.0.1:5000/x":                                     true,
		"registry.example/x@sha256:" + strings.Repeat("a", 64): false,
		"Not A Ref": false,
	} {
		if _, err := restore.ParseReference(ref, false); (err == nil) != ok {
			t.Errorf("ParseReference(%q) = %v, want ok=%v", ref, err, ok)
		}
	}
}
