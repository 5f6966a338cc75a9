package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

type fetchOptions struct {
	vaultOptions
	identities       []string
	force            bool
	unverifiedStream bool
}

func newFetchCommand() *cobra.Command {
	var o fetchOptions
	cmd := &cobra.Command{
		Use:   "fetch ID --config F -i IDENTITY -o OUT",
		Short: "Download, verify and decrypt a vaulted checkpoint",
		Long: `fetch reads the checkpoint's ciphertext from the store once, and on the way
checks its SHA-256 and size, decrypts it with the given identities and checks
the decrypted archive's SHA-256 and size — all against the manifest, whose
signature, form and key binding, and the ciphertext's signatures, are checked
first (see "ckvault verify --help").

The archive is decrypted into a temporary file (0600) in OUT's directory. OUT
appears — atomically, mode 0600 — only when every check has passed and the
fetch is recorded in the audit trail; on any failure OUT does not appear and
the temporary file is overwritten and removed. An existing OUT is not
replaced unless --force.

-i takes age identity files (X25519, post-quantum hybrid, SSH ed25519/RSA,
passphrase-protected, or plugin identities from the config's pluginDir), and
may be repeated; without -i the config's identities: are used. If none of them
can decrypt the checkpoint, fetch names the recipients it was sealed to.

-o - writes the archive to standard output instead, and only together with
--unverified-stream: age releases plaintext before the end of the file is
authenticated, so a consumer of the stream sees bytes of a truncated or
tampered object before fetch can tell. fetch then exits non-zero, and the
consumer must discard everything it read.

A progress bar (size, rate, time left) is shown on standard error when it is a
terminal. Exit status 3 when a check fails.`,
		Example: `  ckvault fetch 3f9c --config /etc/ckvault/ckvault.yaml -i ~/.config/ckvault/age.key -o api.tar
  ckvault fetch 3f9c --config c.yaml -i key.txt -o - --unverified-stream | tar -t`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", defaultConfigPath, "configuration file (the store and the trusted signing keys)")
	f.StringVarP(&o.output, "output", "o", "", `file to write the archive to ("-": standard output, needs --unverified-stream)`)
	f.StringArrayVarP(&o.identities, "identity", "i", nil, "age identity file (repeatable; default: the config's identities)")
	f.BoolVar(&o.force, "force", false, "replace OUT if it exists (only once the new archive is verified)")
	f.BoolVar(&o.unverifiedStream, "unverified-stream", false, "allow -o -: stream plaintext before the final checks, accepting that the consumer may see bytes of a bad object")
	return cmd
}

func (o *fetchOptions) run(ctx context.Context, stdout, stderr io.Writer, id string) error {
	switch {
	case o.output == "":
		return usageError{"missing -o OUT: name the file to write the archive to"}
	case o.output == "-" && !o.unverifiedStream:
		return usageError{"-o - streams plaintext before it is verified; add --unverified-stream to accept that, or write to a file (-o FILE), which appears only once verified"}
	case o.output != "-" && o.unverifiedStream:
		return usageError{"--unverified-stream applies only to -o -; a file output is always verified before it appears"}
	case o.output == "-" && isTerminal(stdout):
		return usageError{"refusing to write a checkpoint archive to a terminal; redirect standard output or use -o FILE"}
	}
	r, cfg, closeFn, err := openResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	ids, err := loadIdentities(cfg, o.identities)
	if err != nil {
		return err
	}
	bar := newProgressBar(stderr)
	opts := responder.FetchOptions{Identities: ids, Force: o.force, Progress: bar.update}
	start := time.Now()
	var mf *manifest.Manifest
	// The summary goes where the archive does not.
	note, dest := stdout, o.output
	if o.output == "-" {
		note, dest = stderr, "standard output"
		mf, err = r.FetchStream(ctx, id, stdout, opts)
	} else {
		mf, err = r.Fetch(ctx, id, o.output, opts)
	}
	bar.done()
	if err != nil {
		return verificationError(err)
	}
	fmt.Fprintf(note, "fetched and verified %s: %s, sha256 %s -> %s (%s)\n", termsafe.String(mf.Namespace+"/"+mf.Pod+"/"+mf.Container),
		humanBytes(mf.Plaintext.Size), mf.Plaintext.SHA256, termsafe.String(dest), time.Since(start).Round(time.Millisecond))
	return nil
}

// loadIdentities reads -i files, or the config's identities.
func loadIdentities(cfg *policy.Config, paths []string) ([]age.Identity, error) {
	if len(paths) == 0 {
		paths = cfg.Identities
	}
	if len(paths) == 0 {
		return nil, usageError{"no identity: pass -i FILE with an age key of one of the recipients (or set identities: in the config)"}
	}
	return envelope.LoadIdentities(paths, envelope.IdentityOptions{PluginDir: cfg.PluginDir, Passphrase: envelope.DefaultPassphrase})
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar draws size, rate and time left on a terminal, at most ten
// times a second; on anything else it stays silent.
type progressBar struct {
	w     io.Writer
	on    bool
	start time.Time
	mu    sync.Mutex
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer) *progressBar {
	return &progressBar{w: w, on: isTerminal(w), start: time.Now()}
}

func (p *progressBar) update(done, total int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond && done < total {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := float64(done) / max(el, 1e-3)
	eta := "--"
	if rate > 0 && done <= total {
		eta = time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	const width = 30
	fill := 0
	if total > 0 {
		fill = int(float64(width) * float64(done) / float64(total))
	}
	bar := make([]byte, width)
	for i := range bar {
		if i < fill {
			bar[i] = '='
		} else {
			bar[i] = ' '
		}
	}
	fmt.Fprintf(p.w, "\r[%s] %s / %s  %s/s  ETA %s   ", bar, humanBytes(done), humanBytes(total), humanBytes(int64(rate)), eta)
	p.drawn = true
}

func (p *progressBar) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
