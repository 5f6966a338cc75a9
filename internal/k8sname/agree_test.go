package k8sname_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/k8sname/k8snametest"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

// TestEveryPlaceAgrees runs the shared corpus through every place that
// accepts a Kubernetes name — the configuration, the audit trail, the
// archive's identity and file name, the object key and its parser — and
// requires each to accept exactly the names Kubernetes accepts for that
// kind. (cmd/ckvault's dev command has its own test on the same corpus.)
// Before the rules were one, the configuration and the audit trail took
// "Worker_1" and every archive was then refused by the object layout.
func TestEveryPlaceAgrees(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // the trail wants a 0700 directory
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	trail, err := audit.Open(filepath.Join(dir, "trail.db"), audit.Options{Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer trail.Close()
	ctx := context.Background()
	at := samplearchive.DefaultTime

	for i, c := range k8snametest.Corpus {
		label, sub := c.Label, c.Subdomain
		check := func(place string, want bool, err error) {
			t.Helper()
			if (err == nil) != want {
				t.Errorf("%s: name %q: error %v, want accepted=%v", place, c.Name, err, want)
			}
		}

		// Configuration: node and namespaces keys. YAML cannot carry
		// invalid UTF-8, so those names are checked everywhere else.
		if utf8.ValidString(c.Name) {
			q := strconv.Quote(c.Name)
			_, err := policy.Parse([]byte(config("node: "+q+"\n")), "c.yaml", "/etc/ckvault")
			check("policy node", sub, err)
			_, err = policy.Parse([]byte(config("node: node-a\nnamespaces:\n  "+q+": {skip: true}\n")), "c.yaml", "/etc/ckvault")
			check("policy namespaces key", label, err)
		}

		// Audit trail: the node of a log, and a record's identity.
		l, err := audit.Open(filepath.Join(dir, fmt.Sprintf("node-%d.db", i)), audit.Options{Node: c.Name})
		check("audit node", sub, err)
		if err == nil {
			l.Close()
		}
		for _, f := range []struct {
			place string
			rec   audit.Record
			want  bool
		}{
			{"audit namespace", audit.Record{Namespace: c.Name}, label},
			{"audit pod", audit.Record{Pod: c.Name}, sub},
			{"audit container", audit.Record{Container: c.Name}, label},
		} {
			if c.Name == "" {
				continue // an empty identity field means "none" in a record
			}
			f.rec.Action, f.rec.Outcome, f.rec.Actor, f.rec.Subject = "detected", audit.OK, "test", "x"
			_, err := trail.Append(ctx, f.rec)
			check(f.place, f.want, err)
		}

		// Object layout: the validators and the key derivation.
		check("manifest.ValidateLabel", label, manifest.ValidateLabel("namespace", c.Name))
		check("manifest.ValidateSubdomain", sub, manifest.ValidateSubdomain("pod", c.Name))
		in := manifest.KeyInput{Namespace: "ns", Pod: "pod", Container: "app", Node: "node-a",
			CheckpointedAt: at, ContainerID: "c", OriginalName: "x.tar", Size: 1}
		for _, f := range []struct {
			place string
			set   func(*manifest.KeyInput)
			want  bool
		}{
			{"BaseKey namespace", func(k *manifest.KeyInput) { k.Namespace = c.Name }, label},
			{"BaseKey pod", func(k *manifest.KeyInput) { k.Pod = c.Name }, sub},
			{"BaseKey container", func(k *manifest.KeyInput) { k.Container = c.Name }, label},
			{"BaseKey node", func(k *manifest.KeyInput) { k.Node = c.Name }, sub},
		} {
			k := in
			f.set(&k)
			_, err := manifest.BaseKey(k)
			check(f.place, f.want, err)
		}

		// Object key parser: a key is taken apart only if its parts are
		// names a writer would have made.
		for _, f := range []struct {
			place, key string
			want       bool
		}{
			{"ParseBaseKey namespace", c.Name + "/pod/app/20260313T214306Z-node-a-0123456789ab", label},
			{"ParseBaseKey pod", "ns/" + c.Name + "/app/20260313T214306Z-node-a-0123456789ab", sub},
			{"ParseBaseKey container", "ns/pod/" + c.Name + "/20260313T214306Z-node-a-0123456789ab", label},
			{"ParseBaseKey node", "ns/pod/app/20260313T214306Z-" + c.Name + "-0123456789ab", sub},
		} {
			_, ok := responder.ParseBaseKey(f.key)
			if ok != f.want {
				t.Errorf("%s: name %q: ok=%v, want %v", f.place, c.Name, ok, f.want)
			}
		}

		// The archive's identity, checked directly and through the
		// parser of a real archive carrying it in spec.dump.
		for _, f := range []struct {
			place string
			id    checkpoint.Identity
			opts  samplearchive.Options
			want  bool
		}{
			{"identity namespace", checkpoint.Identity{Namespace: c.Name, Pod: "pod", Container: "app"}, samplearchive.Options{Namespace: c.Name}, label},
			{"identity pod", checkpoint.Identity{Namespace: "ns", Pod: c.Name, Container: "app"}, samplearchive.Options{Pod: c.Name}, sub},
			{"identity container", checkpoint.Identity{Namespace: "ns", Pod: "pod", Container: c.Name}, samplearchive.Options{Container: c.Name}, label},
		} {
			check(f.place, f.want, f.id.Check())
			if c.Name == "" {
				continue // samplearchive fills in a default
			}
			f.opts.MemoryBytes = 1024
			check(f.place+" in an archive", f.want, inspect(t, f.opts))
		}

		// The kubelet's file name: the pod part, and the namespace part.
		ts := at.Format(time.RFC3339)
		_, err = checkpoint.ParseFilename("checkpoint-" + c.Name + "_default-app-" + ts + ".tar")
		check("ParseFilename pod", sub && !bytes.ContainsRune([]byte(c.Name), '_'), err)
		_, err = checkpoint.ParseFilename("checkpoint-web_" + c.Name + "-app-" + ts + ".tar")
		check("ParseFilename namespace", label, err)
	}
}

func config(extra string) string {
	return extra + `store:
  url: https://minio.example:9000/vault/prod
recipients: [age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]
signing:
  key: /etc/ckvault/signing.key
`
}

func inspect(t *testing.T, opts samplearchive.Options) error {
	t.Helper()
	var b bytes.Buffer
	if err := samplearchive.Write(&b, opts); err != nil {
		t.Fatal(err)
	}
	in := checkpoint.NewInspector(checkpoint.Limits{})
	if _, err := io.Copy(in, &b); err != nil {
		return err
	}
	_, err := in.Finish()
	return err
}
