package trigger

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// Target names one container of one pod.
type Target struct {
	Namespace, Pod, Container string
}

func (t Target) String() string { return t.Namespace + "/" + t.Pod + "/" + t.Container }

// Kubelet calls one kubelet's checkpoint endpoint directly: POST
// /checkpoint/{namespace}/{pod}/{container}?timeout=SECONDS on its
// authenticated port (10250), never through the API server's node proxy,
// which would need the much broader nodes/proxy permission.
type Kubelet struct {
	// URL is the kubelet's base URL, https://HOST:10250.
	URL *url.URL
	// TLS verifies the kubelet's serving certificate and may carry a
	// client certificate. Required: an http:// URL is refused.
	TLS *tls.Config
	// Token, when set, is sent as a bearer token.
	Token string
	// Node names the kubelet's node in messages.
	Node string
	// RuntimeRequestTimeout is what the kubelet's runtime request timeout
	// is taken to be (default 2m, the kubelet's default): the kubelet
	// waits at least that long whatever timeout is asked, so the client
	// waits that long plus Grace (default 30s) before giving up.
	RuntimeRequestTimeout, Grace time.Duration
	// Retries is how often a transient failure (the request could not be
	// sent; 429 or 503) is retried (default 2), Backoff the first pause
	// (default 1s, doubling).
	Retries int
	Backoff time.Duration
}

// Errors the CLI tells apart; every returned error wraps one of them or a
// transport error, with a message that says what to do.
var (
	ErrUnauthorized  = errors.New("the kubelet did not accept the credentials")
	ErrForbidden     = errors.New("the kubelet refused the checkpoint")
	ErrNotFound      = errors.New("the kubelet found nothing to checkpoint")
	ErrRuntime       = errors.New("the container runtime failed to checkpoint")
	ErrTimeout       = errors.New("no answer from the kubelet in time")
	ErrBadAnswer     = errors.New("the kubelet's answer is not a checkpoint archive path")
	ErrKubeletStatus = errors.New("unexpected answer from the kubelet")
)

// maxAnswer bounds what is read of a kubelet's answer.
const maxAnswer = 64 << 10

// Checkpoint asks the kubelet to checkpoint t and returns the path of the
// archive on the node. timeout is the kubelet's (the runtime's) time limit,
// rounded up to whole seconds; the kubelet applies at least its runtime
// request timeout, so the HTTP request waits for the longer of the two
// plus a grace period: the kubelet answers only when the runtime is done.
func (k *Kubelet) Checkpoint(ctx context.Context, t Target, timeout time.Duration) (string, error) {
	if k.URL == nil || k.URL.Scheme != "https" {
		return "", fmt.Errorf("kubelet URL %v: only https is accepted (the kubelet's authenticated port, 10250)", k.URL)
	}
	if k.TLS == nil {
		return "", errors.New("kubelet: no TLS configuration")
	}
	secs := int64((timeout + time.Second - 1) / time.Second)
	u := *k.URL
	u.Path = path.Join("/", u.Path, "checkpoint", t.Namespace, t.Pod, t.Container)
	u.RawQuery = url.Values{"timeout": {strconv.FormatInt(secs, 10)}}.Encode()
	rrt, grace := k.RuntimeRequestTimeout, k.Grace
	if rrt == 0 {
		rrt = 2 * time.Minute
	}
	if grace == 0 {
		grace = 30 * time.Second
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: k.TLS, Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true},
		Timeout:   max(time.Duration(secs)*time.Second, rrt) + grace,
		// A kubelet does not redirect; following one could send the token
		// elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	retries, backoff := k.Retries, k.Backoff
	if retries == 0 {
		retries = 2
	}
	if backoff == 0 {
		backoff = time.Second
	}
	for attempt := 0; ; attempt++ {
		p, err, transient := k.once(ctx, client, u.String(), t)
		if err == nil || !transient || attempt >= retries {
			return p, err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(backoff << attempt):
		}
	}
}

func (k *Kubelet) once(ctx context.Context, client *http.Client, u string, t Target) (archive string, err error, transient bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", err, false
	}
	if k.Token != "" {
		req.Header.Set("Authorization", "Bearer "+k.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err(), false
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", fmt.Errorf("%w: %s did not answer for %s within %s; the runtime may still be writing the checkpoint, which the node daemon vaults when it appears (look for it with `ckvault list --namespace %s --pod %s`)",
				ErrTimeout, k.where(), t, client.Timeout, t.Namespace, t.Pod), false
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			// Nothing was sent: safe to try again.
			return "", fmt.Errorf("connecting to %s: %w", k.where(), err), true
		}
		return "", fmt.Errorf("asking %s to checkpoint %s: %w", k.where(), t, err), false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	msg := printable(string(body))
	switch resp.StatusCode {
	case http.StatusOK:
		p, err := ParseAnswer(body, t)
		if err != nil {
			return "", fmt.Errorf("%s: %w", k.where(), err), false
		}
		return p, nil, false
	case http.StatusUnauthorized:
		return "", fmt.Errorf("%w (401 from %s): give a client certificate the kubelet's client CA signed (--cert/--key) or a token the API server accepts (--token-file); the kubelet also needs webhook authentication for tokens", ErrUnauthorized, k.where()), false
	case http.StatusForbidden:
		return "", fmt.Errorf("%w (403 from %s: %s): the caller needs create on nodes/checkpoint (a ClusterRole rule {apiGroups: [\"\"], resources: [\"nodes/checkpoint\"], verbs: [\"create\"]}); nodes/proxy is not needed and should not be granted", ErrForbidden, k.where(), msg), false
	case http.StatusNotFound:
		what := fmt.Sprintf("either %s is not a container of a pod on node %s, or the kubelet's ContainerCheckpoint feature gate is off (beta and on by default since Kubernetes 1.30)", t, k.nodeName())
		return "", fmt.Errorf("%w (404 from %s: %s): %s", ErrNotFound, k.where(), msg, what), false
	case http.StatusInternalServerError:
		return "", fmt.Errorf("%w (500 from %s): %s", ErrRuntime, k.where(), msg), false
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return "", fmt.Errorf("%w: %s answered %s: %s", ErrKubeletStatus, k.where(), resp.Status, msg), true
	default:
		return "", fmt.Errorf("%w: %s answered %s: %s", ErrKubeletStatus, k.where(), resp.Status, msg), false
	}
}

func (k *Kubelet) where() string {
	if k.Node != "" {
		return "the kubelet of node " + k.Node + " (" + k.URL.Host + ")"
	}
	return "the kubelet at " + k.URL.Host
}

func (k *Kubelet) nodeName() string {
	if k.Node != "" {
		return k.Node
	}
	return k.URL.Hostname()
}

// ParseAnswer reads a kubelet's 200 answer, {"items":["<absolute path>"]},
// and returns the path, refusing anything else: more or fewer items, a
// relative path, or a file name that is not the kubelet's name for a
// checkpoint of t (checkpoint-<pod>_<namespace>-<container>-<time>.tar).
func ParseAnswer(body []byte, t Target) (string, error) {
	var a struct {
		Items []string `json:"items"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return "", fmt.Errorf("%w: %v in %q", ErrBadAnswer, err, clip(printable(string(body))))
	}
	if len(a.Items) != 1 {
		return "", fmt.Errorf("%w: %d items, want 1", ErrBadAnswer, len(a.Items))
	}
	p := a.Items[0]
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return "", fmt.Errorf("%w: %q is not a clean absolute path", ErrBadAnswer, clip(p))
	}
	base := path.Base(p)
	fn, err := checkpoint.ParseFilename(base)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if fn.Pod != t.Pod || fn.NamespaceContainer != t.Namespace+"-"+t.Container {
		return "", fmt.Errorf("%w: %q names another container than %s", ErrBadAnswer, base, t)
	}
	return p, nil
}

// printable escapes control characters and trims a message from the
// network for a one-line error.
func printable(s string) string {
	s = strings.TrimSpace(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
			b.WriteByte(' ')
		case unicode.IsControl(r) || r == unicode.ReplacementChar:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	return clip(b.String())
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
