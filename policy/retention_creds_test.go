package policy

import (
	"strings"
	"testing"
)

// TestRetentionCredentials: the retention role's credentials come as a
// pair, relative paths resolve against the config's directory, and
// HasCredentials reports them.
func TestRetentionCredentials(t *testing.T) {
	cfg, err := Parse([]byte(minimal+"retention: {global: {maxCount: 1}, accessKeyFile: gc/ak, secretKeyFile: /etc/gc/sk}\n"), "c.yaml", "/etc/ckvault")
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Retention; !r.HasCredentials() || r.AccessKeyFile != "/etc/ckvault/gc/ak" || r.SecretKeyFile != "/etc/gc/sk" {
		t.Errorf("retention credentials %q %q", r.AccessKeyFile, r.SecretKeyFile)
	}
	if _, err := Parse([]byte(minimal+"retention: {global: {maxCount: 1}, accessKeyFile: gc/ak}\n"), "c.yaml", "/etc/ckvault"); err == nil || !strings.Contains(err.Error(), "retention.accessKeyFile") {
		t.Errorf("accessKeyFile alone: %v", err)
	}
	cfg, err = Parse([]byte(minimal+"retention: {global: {maxCount: 1}}\n"), "c.yaml", "/etc/ckvault")
	if err != nil || cfg.Retention.HasCredentials() {
		t.Errorf("no credentials: %v, HasCredentials %v", err, cfg.Retention.HasCredentials())
	}
	var none *RetentionConfig
	if none.HasCredentials() {
		t.Error("nil retention has credentials")
	}
}
