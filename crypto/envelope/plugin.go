package envelope

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"filippo.io/age"
	"filippo.io/age/plugin"
)

// filippo.io/age/plugin v1.3.2 starts "age-plugin-<name>" through
// exec.Command, i.e. a $PATH lookup, and has no option to give it a
// directory. To run plugins only from the configured directory we pin $PATH
// to that directory, and nothing else, for the length of each plugin call,
// after checking that the lookup resolves to exactly <dir>/age-plugin-<name>.
//
// Caveat: $PATH is process-wide. While a plugin call is in progress, any
// other goroutine of this process that starts a program by bare name sees
// PATH=<plugin dir> (and most likely fails to find it). ckvault starts no
// other programs by bare name; calls are serialised by pluginMu. The plugin
// process itself inherits PATH=<plugin dir>. Replacing this with an
// in-package plugin client is the clean fix if age never grows an option.
var pluginMu sync.Mutex

// ErrPluginDir is wrapped by errors about the plugin directory or binary.
var ErrPluginDir = errors.New("age plugin not available")

// pluginBinary checks that dir/age-plugin-name is a regular executable file
// and returns its path.
func pluginBinary(dir, name string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("plugin %q: no plugin directory is configured, and plugins are never looked up in $PATH: %w", name, ErrPluginDir)
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("plugin directory %q: must be an absolute path: %w", dir, ErrPluginDir)
	}
	bin := filepath.Join(dir, "age-plugin-"+name)
	st, err := os.Stat(bin)
	if err != nil {
		return "", fmt.Errorf("plugin %q: %v; install age-plugin-%s into %s: %w", name, err, name, dir, ErrPluginDir)
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("plugin %q: %s is not an executable file: %w", name, bin, ErrPluginDir)
	}
	return bin, nil
}

// inPluginDir runs f with $PATH pinned to dir (see above).
func inPluginDir(dir, name string, f func() error) error {
	bin, err := pluginBinary(dir, name)
	if err != nil {
		return err
	}
	pluginMu.Lock()
	defer pluginMu.Unlock()
	old, had := os.LookupEnv("PATH")
	if err := os.Setenv("PATH", dir); err != nil {
		return fmt.Errorf("plugin %q: pinning PATH: %v", name, err)
	}
	defer func() {
		if had {
			os.Setenv("PATH", old)
		} else {
			os.Unsetenv("PATH")
		}
	}()
	// Belt and braces: the lookup age is about to do must land on bin.
	if got, err := exec.LookPath("age-plugin-" + name); err != nil || got != bin {
		return fmt.Errorf("plugin %q: lookup resolved to %q, want %q: %w", name, got, bin, ErrPluginDir)
	}
	return f()
}

// daemonUI is the non-interactive plugin UI: plugins may inform, but any
// request for input fails, since nobody is there to answer.
func daemonUI() *plugin.ClientUI {
	return &plugin.ClientUI{
		DisplayMessage: func(name, message string) error {
			slog.Info("age plugin message", "plugin", name, "message", message)
			return nil
		},
		RequestValue: func(name, prompt string, secret bool) (string, error) {
			return "", fmt.Errorf("plugin %q asked for input (%q) but no interactive UI is configured", name, prompt)
		},
		Confirm: func(name, prompt, yes, no string) (bool, error) {
			return false, fmt.Errorf("plugin %q asked for confirmation (%q) but no interactive UI is configured", name, prompt)
		},
		WaitTimer: func(name string) {
			slog.Info("waiting for age plugin", "plugin", name)
		},
	}
}

type pluginRecipient struct {
	r    *plugin.Recipient
	dir  string
	name string
}

var _ age.RecipientWithLabels = (*pluginRecipient)(nil)

func (o Options) newPluginRecipient(s, name string) (age.Recipient, error) {
	if _, err := pluginBinary(o.PluginDir, name); err != nil {
		return nil, err
	}
	ui := o.PluginUI
	if ui == nil {
		ui = daemonUI()
	}
	r, err := plugin.NewRecipient(s, ui)
	if err != nil {
		return nil, err
	}
	return &pluginRecipient{r: r, dir: o.PluginDir, name: name}, nil
}

func (p *pluginRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	s, _, err := p.WrapWithLabels(fileKey)
	return s, err
}

func (p *pluginRecipient) WrapWithLabels(fileKey []byte) (s []*age.Stanza, l []string, err error) {
	err = inPluginDir(p.dir, p.name, func() error {
		s, l, err = p.r.WrapWithLabels(fileKey)
		return err
	})
	return s, l, err
}

type pluginIdentity struct {
	id   *plugin.Identity
	dir  string
	name string
}

func (p *pluginIdentity) Unwrap(stanzas []*age.Stanza) (key []byte, err error) {
	err = inPluginDir(p.dir, p.name, func() error {
		key, err = p.id.Unwrap(stanzas)
		return err
	})
	return key, err
}
