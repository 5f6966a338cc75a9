package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/restore"
)

type restoreOptions struct {
	vaultOptions
	identities []string
	image      string
	layout     string
	tag        string
	platform   string
	registryCA string
	allowHTTP  bool
	tmpDir     string
}

func newRestoreCommand() *cobra.Command {
	var o restoreOptions
	cmd := &cobra.Command{
		Use:   "restore ID (--image REF | --oci-layout DIR) --config F -i IDENTITY",
		Short: "Turn a vaulted checkpoint into an OCI checkpoint image for CRI-O and containerd",
		Long: `restore fetches the checkpoint and checks it exactly as fetch does (see
"ckvault fetch --help"), then builds an OCI checkpoint image from the verified
archive only, and pushes it to REF, or writes it into the OCI layout DIR.

The image is an index with one manifest for one platform (--platform, default
linux/amd64: a checkpoint restores only on the architecture it was taken on),
whose single layer is the archive itself, uncompressed: unpacked at /, it is
the archive's members, as "buildah add IMAGE archive.tar /" makes it. The
index and the manifest both carry io.kubernetes.cri-o.annotations.checkpoint.name
(what CRI-O looks for) and the org.criu.checkpoint.* keys (container, pod,
namespace, engine, runtime, rootfs image name and id; containerd up to 2.3
reads them from the index). To restore on CRI-O, point a pod's container
image at the pushed digest (printed); see README.md.

THE IMAGE HOLDS THE CHECKPOINT IN PLAINTEXT: every memory page of the
container's processes. Push it only to a private registry, and delete it
when done. The registry is reached over TLS with a verified certificate
(--registry-ca adds a CA) and the credentials of your docker config (docker
login); plain HTTP needs --allow-http.

The decrypted archive is held in a 0600 temporary file in --tmp-dir (default
$TMPDIR or /tmp) while the image is built and pushed, and is overwritten and
removed afterwards, whatever the outcome. The restore — the image's digest,
registry and repository — is recorded in the audit trail. Exit status 3 when
a check fails; nothing is pushed then.

Through the vault service (--server URL, see "ckvault list --help"), the
service authorises the ciphertext read with the verb restore (not fetch) and
records it as a restore; after the push the image's digest, registry and
repository are reported to the service's trail (POST /v1/restores). You need
the verbs list, get and restore in the checkpoint's namespace.`,
		Example: `  ckvault restore 3f9c --config c.yaml -i age.key --image registry.example/forensics/api:3f9c
  ckvault restore 3f9c --config c.yaml -i age.key --oci-layout ./api-3f9c --tag 3f9c
  ckvault restore 3f9c --server https://vault.example:8443 --ca ca.crt --cert me.crt --key me.key \
      --trusted-key signing.pub -i age.key --image registry.example/forensics/api:3f9c`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0])
		},
	}
	o.addFlags(cmd)
	f := cmd.Flags()
	f.StringArrayVarP(&o.identities, "identity", "i", nil, "age identity file (repeatable; default: the config's identities)")
	f.StringVar(&o.image, "image", "", "push the image to this reference, REGISTRY/REPOSITORY[:TAG]")
	f.StringVar(&o.layout, "oci-layout", "", "write the image into this OCI layout directory (created 0700) instead of pushing it")
	f.StringVar(&o.tag, "tag", "latest", "with --oci-layout: the name of the image in the layout's index.json")
	f.StringVar(&o.platform, "platform", "linux/amd64", "OS/ARCH[/VARIANT] of the node the checkpoint was taken on")
	f.StringVar(&o.registryCA, "registry-ca", "", "PEM CA bundle that signed the registry's certificate, in addition to the system's")
	f.BoolVar(&o.allowHTTP, "allow-http", false, "allow a registry without TLS (the image holds plaintext memory: a trusted host only)")
	f.StringVar(&o.tmpDir, "tmp-dir", "", "directory for the decrypted archive while the image is built (default $TMPDIR or /tmp)")
	return cmd
}

// restoreOutput is `restore -o json`.
type restoreOutput struct {
	ID         string  `json:"id"`
	Object     string  `json:"object"`
	Namespace  string  `json:"namespace"`
	Pod        string  `json:"pod"`
	Container  string  `json:"container"`
	Image      string  `json:"image,omitempty"`
	Registry   string  `json:"registry,omitempty"`
	Repository string  `json:"repository,omitempty"`
	Layout     string  `json:"ociLayout,omitempty"`
	Tag        string  `json:"tag"`
	Digest     string  `json:"digest"`
	Manifest   string  `json:"manifestDigest"`
	Layer      string  `json:"layerDigest"`
	Size       int64   `json:"size"`
	Platform   string  `json:"platform"`
	Seconds    float64 `json:"seconds"`
}

func (o *restoreOptions) run(ctx context.Context, stdout, stderr io.Writer, id string) error {
	var ref name.Tag
	switch {
	case o.image == "" && o.layout == "":
		return usageError{"name where the image goes: --image REGISTRY/REPOSITORY[:TAG] to push it, or --oci-layout DIR to write it locally"}
	case o.image != "" && o.layout != "":
		return usageError{"--image and --oci-layout exclude each other: push, or write a layout (then push it with crane or skopeo)"}
	case o.output != "table" && o.output != "json":
		return usageError{fmt.Sprintf("-o %q: use table or json", o.output)}
	case o.layout != "" && o.allowHTTP:
		return usageError{"--allow-http applies only to --image"}
	}
	platform, err := v1.ParsePlatform(o.platform)
	if err != nil || platform.OS == "" || platform.Architecture == "" {
		return usageError{fmt.Sprintf("--platform %q: give OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64", o.platform)}
	}
	pushOpts := restore.PushOptions{AllowHTTP: o.allowHTTP, UserAgent: "ckvault/" + version}
	if o.image != "" {
		if ref, err = restore.ParseReference(o.image, o.allowHTTP); err != nil {
			return usageError{err.Error()}
		}
		if o.registryCA != "" {
			if pushOpts.RootCAs, err = caPool(o.registryCA); err != nil {
				return err
			}
		}
	}
	r, cfg, closeFn, err := openRestoreResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	ids, err := loadIdentities(cfg, o.identities)
	if err != nil {
		return err
	}
	if o.allowHTTP {
		fmt.Fprintf(stderr, "WARNING: --allow-http: the checkpoint image, which holds the container's memory in plaintext, may cross the network unencrypted to %s\n", ref.RegistryStr())
	}
	fmt.Fprintln(stderr, "warning: the image holds the checkpoint's memory in plaintext (secrets, keys, tokens of the container's processes); keep it in a private registry and delete it when done")

	start := time.Now()
	var res restore.Result
	fetchBar := newProgressBar(stderr)
	publish := func(ctx context.Context, m *manifest.Manifest, archive io.ReaderAt) (map[string]string, error) {
		fetchBar.done()
		if err := restore.CheckMembers(io.NewSectionReader(archive, 0, m.Plaintext.Size)); err != nil {
			return nil, fmt.Errorf("%s: %w; no image was built", m.Object, err)
		}
		idx, err := restore.Build(m, archive, *platform)
		if err != nil {
			return nil, err
		}
		if o.layout != "" {
			res, err = restore.WriteLayout(o.layout, o.tag, idx)
		} else {
			pushBar := newProgressBar(stderr)
			pushOpts.Progress = pushBar.update
			res, err = restore.Push(ctx, idx, ref, pushOpts)
			pushBar.done()
		}
		d := res.AuditDetail()
		d["platform"] = platform.String()
		return d, err
	}
	m, err := r.Restore(ctx, id, responder.RestoreOptions{
		FetchOptions: responder.FetchOptions{Identities: ids, Progress: fetchBar.update},
		TempDir:      o.tmpDir,
		Publish:      publish,
	})
	fetchBar.done()
	if err != nil {
		return verificationError(err)
	}
	kp, _ := responder.ParseBaseKey(m.Object)
	out := restoreOutput{
		ID: kp.ShortID, Object: m.Object, Namespace: m.Namespace, Pod: m.Pod, Container: m.Container,
		Image: res.Pinned, Registry: res.Registry, Repository: res.Repository, Layout: res.Layout, Tag: res.Tag,
		Digest: res.Digest.String(), Manifest: res.Manifest.String(), Layer: res.Layer.String(), Size: res.LayerSize,
		Platform: platform.String(), Seconds: time.Since(start).Seconds(),
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	where := out.Image
	if o.layout != "" {
		where = fmt.Sprintf("OCI layout %s (tag %s, index %s)", res.Layout, res.Tag, out.Digest)
	}
	fmt.Fprintf(stdout, "restored %s/%s/%s (%s) as %s in %s\n", m.Namespace, m.Pod, m.Container,
		humanBytes(m.Plaintext.Size), where, time.Since(start).Round(time.Millisecond))
	return nil
}

// caPool is the system's roots plus the PEM certificates in file.
func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading --registry-ca: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--registry-ca %s holds no PEM certificate", file)
	}
	return pool, nil
}
