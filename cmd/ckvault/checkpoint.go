package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
	"github.com/checkpoint-vault/ckvault/vault/trigger"
)

type checkpointOptions struct {
	vaultOptions
	kubeconfig, kubeContext string
	node, kubelet           string
	kubeletCA               string
	cert, key, tokenFile    string
	insecureSkipVerify      bool
	timeout                 time.Duration
	vaultTimeout            time.Duration
	detectTimeout           time.Duration
}

func newCheckpointCommand() *cobra.Command {
	var o checkpointOptions
	cmd := &cobra.Command{
		Use:   "checkpoint NAMESPACE/POD/CONTAINER --config F",
		Short: "Ask the kubelet for a checkpoint of a container and wait until it is vaulted",
		Long: `checkpoint calls the checkpoint API of the kubelet on the pod's node directly
(POST /checkpoint/NS/POD/CONTAINER on port 10250), never through the API
server's node proxy: the credentials need only create on nodes/checkpoint.

The pod's node and its kubelet's address come from the Pod and Node objects
(get on pods and nodes, through --kubeconfig), or are given with --node and
--kubelet https://HOST:10250. The kubelet is called with --cert/--key or
--token-file, or else with the kubeconfig user's client certificate or token,
and its serving certificate is verified against --kubelet-ca, or else the
kubeconfig's cluster CA.

Then it waits until the node daemon has vaulted the archive the kubelet
wrote — a verified manifest for that file from that node in the store of
--config — and prints the vault id, the object and the time from the request
to the proof. On the node itself (where the daemon's socket is reachable) a
namespace policy that skips the archive, a rejection, or a daemon that has not
noticed the archive is reported at once; elsewhere a daemon that is not
running shows as a timeout (--vault-timeout). A namespace the config skips is
refused before the kubelet is asked: its archive would stay on the node in
plaintext.

The request, the kubelet's answer and the result are recorded in the audit
trail. Two runs for one container on one machine do not overlap (a lock).`,
		Example: `  ckvault checkpoint payments/api-0/server --config /etc/ckvault/ckvault.yaml
  ckvault checkpoint payments/api-0/server --config c.yaml --kubelet https://10.0.0.7:10250 --node node-a \
      --kubelet-ca kubelet-ca.crt --token-file token -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0])
		},
	}
	o.addFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.kubeContext, "context", "", "kubeconfig context")
	f.StringVar(&o.node, "node", "", "the pod's node (default: from the Pod object)")
	f.StringVar(&o.kubelet, "kubelet", "", "the kubelet's URL, https://HOST:10250 (default: the node's address from the Node object)")
	f.StringVar(&o.kubeletCA, "kubelet-ca", "", "PEM CA bundle that signed the kubelet's serving certificate (default: the kubeconfig's cluster CA)")
	f.StringVar(&o.cert, "cert", "", "client certificate for the kubelet (PEM; with --key)")
	f.StringVar(&o.key, "key", "", "client key for the kubelet (PEM)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding a bearer token for the kubelet")
	f.BoolVar(&o.insecureSkipVerify, "insecure-skip-kubelet-tls-verify", false, "DANGEROUS: do not verify the kubelet's certificate (a man in the middle gets the token and can answer anything)")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "the kubelet's time limit for the checkpoint (it applies at least its runtime request timeout)")
	f.DurationVar(&o.vaultTimeout, "vault-timeout", 10*time.Minute, "how long to wait for the archive to be vaulted")
	f.DurationVar(&o.detectTimeout, "detect-timeout", time.Minute, "on the node: how long the daemon may take to notice the archive")
	return cmd
}

// checkpointOutput is `checkpoint -o json`.
type checkpointOutput struct {
	ID             string  `json:"id"`
	Object         string  `json:"object"`
	Namespace      string  `json:"namespace"`
	Pod            string  `json:"pod"`
	Container      string  `json:"container"`
	Node           string  `json:"node"`
	Archive        string  `json:"archive"`
	Seconds        float64 `json:"seconds"`
	KubeletSeconds float64 `json:"kubeletSeconds"`
}

func (o *checkpointOptions) run(ctx context.Context, stdout, stderr io.Writer, arg string) error {
	parts := strings.Split(arg, "/")
	if len(parts) != 3 {
		return usageError{fmt.Sprintf("%q: name the container as NAMESPACE/POD/CONTAINER", arg)}
	}
	t := trigger.Target{Namespace: parts[0], Pod: parts[1], Container: parts[2]}
	switch {
	case trigger.CheckTarget(t) != nil:
		return usageError{trigger.CheckTarget(t).Error()}
	case o.output != "table" && o.output != "json":
		return usageError{fmt.Sprintf("-o %q: use table or json", o.output)}
	case (o.cert == "") != (o.key == ""):
		return usageError{"--cert and --key go together"}
	case o.cert != "" && o.tokenFile != "":
		return usageError{"give --cert/--key or --token-file, not both"}
	case o.timeout < time.Second:
		return usageError{"--timeout must be at least 1s"}
	}
	r, cfg, closeFn, err := openResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	if np, ok := cfg.Namespaces[t.Namespace]; cfg != nil && ok && np.Skip {
		return fmt.Errorf("namespace %s is skipped by the policy in %s: the daemon would leave the archive on the node unvaulted, in plaintext; refusing to ask for a checkpoint (remove skip: true for it first)", t.Namespace, o.config)
	}
	kc, err := o.kubeletClient(ctx, stderr, t)
	if err != nil {
		return err
	}
	// The responder's store: the configured one, or the vault service's
	// when the client is in service mode.
	st := r.Store
	tr := &trigger.Trigger{
		Kubelet: kc, Timeout: o.timeout, Audit: r.Audit, Actor: r.Actor,
		LockDir: lockDir(),
		Wait: trigger.WaitOptions{Finder: &trigger.StoreFinder{Store: st, Responder: r},
			DetectWithin: o.detectTimeout, VaultWithin: o.vaultTimeout},
	}
	// On the node, the daemon's own trail says what it did with the file.
	if sock, ok := r.Audit.(*auditsock.Client); ok {
		tr.Wait.Trail = sock
	}
	fmt.Fprintf(stderr, "asking %s to checkpoint %s...\n", kc.URL.Host, t)
	res, err := tr.Run(ctx, t)
	if err != nil {
		if res != nil && res.Archive != "" {
			return fmt.Errorf("%w (the archive is %s on node %s)", err, res.Archive, res.Node)
		}
		return err
	}
	out := checkpointOutput{ID: res.ID, Object: res.Object, Namespace: t.Namespace, Pod: t.Pod, Container: t.Container,
		Node: res.Node, Archive: res.Archive, Seconds: res.Proven.Sub(res.Requested).Seconds(),
		KubeletSeconds: res.Answered.Sub(res.Requested).Seconds()}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(stdout, "vaulted %s from node %s as %s (%s) in %.1fs (the kubelet took %.1fs)\n",
		t, res.Node, res.ID, res.Object, out.Seconds, out.KubeletSeconds)
	return nil
}

// kubeletClient resolves the kubelet's address, CA and credentials.
func (o *checkpointOptions) kubeletClient(ctx context.Context, stderr io.Writer, t trigger.Target) (*trigger.Kubelet, error) {
	var rc *rest.Config
	loadKube := func() (*rest.Config, error) {
		if rc != nil {
			return rc, nil
		}
		c, err := kubeapi.Load(o.kubeconfig, o.kubeContext)
		if err != nil {
			return nil, fmt.Errorf("%w; pass --kubeconfig, or --kubelet with --kubelet-ca and --cert/--key or --token-file", err)
		}
		rc = c
		return rc, nil
	}
	k := &trigger.Kubelet{Node: o.node}
	if o.kubelet != "" {
		u, err := url.Parse(o.kubelet)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, usageError{fmt.Sprintf("--kubelet %q: give https://HOST:10250", o.kubelet)}
		}
		k.URL = u
		if k.Node == "" {
			k.Node = u.Hostname()
		}
	} else {
		c, err := loadKube()
		if err != nil {
			return nil, err
		}
		cs, err := kubeapi.New(c)
		if err != nil {
			return nil, err
		}
		loc, err := trigger.Locate(ctx, cs, t, o.node)
		if err != nil {
			return nil, err
		}
		k.URL, k.Node = loc.URL, loc.Node
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case o.insecureSkipVerify:
		fmt.Fprintf(stderr, "WARNING: --insecure-skip-kubelet-tls-verify: the kubelet at %s is not authenticated; anyone in the path gets the credentials and can answer anything\n", k.URL.Host)
		tc.InsecureSkipVerify = true
	case o.kubeletCA != "":
		pool, err := pemPool(o.kubeletCA)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	default:
		if c, err := loadKube(); err == nil {
			pem := c.TLSClientConfig.CAData
			if len(pem) == 0 && c.TLSClientConfig.CAFile != "" {
				if pem, err = os.ReadFile(c.TLSClientConfig.CAFile); err != nil {
					return nil, fmt.Errorf("reading the kubeconfig's CA: %w", err)
				}
			}
			if len(pem) > 0 {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("the kubeconfig's CA holds no PEM certificate; pass --kubelet-ca")
				}
				tc.RootCAs = pool
			}
		}
	}
	switch {
	case o.cert != "":
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("loading --cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	case o.tokenFile != "":
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading --token-file: %w", err)
		}
		k.Token = strings.TrimSpace(string(b))
	default:
		c, err := loadKube()
		if err != nil {
			return nil, err
		}
		tlsc := c.TLSClientConfig
		switch {
		case len(tlsc.CertData) > 0 || tlsc.CertFile != "":
			var pair tls.Certificate
			if len(tlsc.CertData) > 0 {
				pair, err = tls.X509KeyPair(tlsc.CertData, tlsc.KeyData)
			} else {
				pair, err = tls.LoadX509KeyPair(tlsc.CertFile, tlsc.KeyFile)
			}
			if err != nil {
				return nil, fmt.Errorf("the kubeconfig user's client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		case c.BearerToken != "":
			k.Token = c.BearerToken
		case c.BearerTokenFile != "":
			b, err := os.ReadFile(c.BearerTokenFile)
			if err != nil {
				return nil, fmt.Errorf("the kubeconfig user's token file: %w", err)
			}
			k.Token = strings.TrimSpace(string(b))
		default:
			return nil, fmt.Errorf("the kubeconfig user has no client certificate or token the kubelet could check (exec and auth-provider plugins are not used for the kubelet); pass --cert/--key or --token-file")
		}
	}
	k.TLS = tc
	return k, nil
}

func pemPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// lockDir holds the per-container trigger locks of this user.
func lockDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "ckvault", "locks")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ckvault-locks-%d", os.Getuid()))
}
