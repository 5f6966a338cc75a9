package k8sname

import (
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/checkpoint-vault/ckvault/internal/k8sname/k8snametest"
)

// The expressions of k8s.io/apimachinery/pkg/util/validation
// (dns1123LabelFmt, dns1123SubdomainFmt), with its length limits checked
// beside them, as Kubernetes does: the reference the byte loop must match.
var (
	k8sLabelRE     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	k8sSubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func k8sLabel(s string) bool     { return len(s) <= 63 && k8sLabelRE.MatchString(s) }
func k8sSubdomain(s string) bool { return len(s) <= 253 && k8sSubdomainRE.MatchString(s) }

func TestCorpus(t *testing.T) {
	for _, c := range k8snametest.Corpus {
		if got := Label.Valid(c.Name); got != c.Label {
			t.Errorf("Label.Valid(%q) = %v, want %v", c.Name, got, c.Label)
		}
		if got := Subdomain.Valid(c.Name); got != c.Subdomain {
			t.Errorf("Subdomain.Valid(%q) = %v, want %v", c.Name, got, c.Subdomain)
		}
		// The corpus itself agrees with Kubernetes' expressions.
		if k8sLabel(c.Name) != c.Label || k8sSubdomain(c.Name) != c.Subdomain {
			t.Errorf("corpus entry %q disagrees with the Kubernetes expressions", c.Name)
		}
		for _, k := range []Kind{Namespace, Container} {
			if k.Valid(c.Name) != c.Label || (k.Check(c.Name) == nil) != c.Label {
				t.Errorf("%s %q: want valid=%v", k, c.Name, c.Label)
			}
		}
		for _, k := range []Kind{Pod, Node} {
			if k.Valid(c.Name) != c.Subdomain || (k.Check(c.Name) == nil) != c.Subdomain {
				t.Errorf("%s %q: want valid=%v", k, c.Name, c.Subdomain)
			}
		}
	}
}

func TestErrorMessage(t *testing.T) {
	for _, tt := range []struct {
		kind Kind
		name string
		want []string
	}{
		{Node, "Worker_1", []string{`invalid node name "Worker_1"`, `upper-case 'W' at offset 0`, "DNS-1123 subdomain"}},
		{Node, "worker_1", []string{`'_' at offset 6 is not allowed`}},
		{Namespace, "a.b", []string{`invalid namespace name "a.b"`, "'.' at offset 1", "DNS-1123 label"}},
		{Pod, "a..b", []string{`'.' at offset 2 follows '.'`}},
		{Pod, "", []string{"it is empty"}},
		{Container, "a\x1b[2K", []string{`"a\x1b[2K"`, `'\x1b' at offset 1`}},
		{Pod, "a\xff", []string{"byte 0xff at offset 1"}},
		{Pod, "a\u2028", []string{`'\u2028' at offset 1`}},
		{Container, strings.Repeat("x", 300), []string{"... (300 bytes)", "it is 300 characters long, more than 63"}},
	} {
		err := tt.kind.Check(tt.name)
		if err == nil {
			t.Errorf("%s %q accepted", tt.kind, tt.name)
			continue
		}
		msg := err.Error()
		for _, w := range tt.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s %q: message %q lacks %q", tt.kind, tt.name, msg, w)
			}
		}
		if strings.IndexFunc(msg, func(r rune) bool { return unicode.IsControl(r) || r == '\u2028' }) >= 0 || len(msg) > 400 {
			t.Errorf("message carries a raw control character or is too long: %q", msg)
		}
	}
}

func TestFromHostname(t *testing.T) {
	for in, want := range map[string]string{"Worker-1": "worker-1", " node-a.Example.COM\n": "node-a.example.com", "my_host": "my_host"} {
		if got := FromHostname(in); got != want {
			t.Errorf("FromHostname(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	for _, tt := range []struct {
		kind     Kind
		in, want string
	}{
		{Node, "Worker_1", "worker-1"},
		{Node, "Node_A.local", "node-a.local"},
		{Node, "a._b", "a.b"},
		{Namespace, "Team.A", "team-a"},
		{Node, "___", ""},
		{Node, "", ""},
		{Container, strings.Repeat("A", 100), strings.Repeat("a", 63)},
	} {
		if got := Suggest(tt.kind, tt.in); got != tt.want {
			t.Errorf("Suggest(%s, %q) = %q, want %q", tt.kind, tt.in, got, tt.want)
		}
	}
	for _, c := range k8snametest.Corpus {
		for _, k := range []Kind{Namespace, Pod, Container, Node} {
			if s := Suggest(k, c.Name); s != "" && !k.Valid(s) {
				t.Errorf("Suggest(%s, %q) = %q, which is not valid", k, c.Name, s)
			}
		}
	}
}

// FuzzRules checks the rules against Kubernetes' own expressions, and that
// Suggest only ever offers a valid name.
func FuzzRules(f *testing.F) {
	for _, c := range k8snametest.Corpus {
		f.Add(c.Name)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := Label.Valid(s), k8sLabel(s); got != want {
			t.Fatalf("Label.Valid(%q) = %v, Kubernetes says %v", s, got, want)
		}
		if got, want := Subdomain.Valid(s), k8sSubdomain(s); got != want {
			t.Fatalf("Subdomain.Valid(%q) = %v, Kubernetes says %v", s, got, want)
		}
		if (Subdomain.Check("pod", s) == nil) != k8sSubdomain(s) {
			t.Fatalf("Check and Valid disagree on %q", s)
		}
		for _, k := range []Kind{Namespace, Node} {
			if g := Suggest(k, s); g != "" && !k.Valid(g) {
				t.Fatalf("Suggest(%s, %q) = %q, not valid", k, s, g)
			}
		}
	})
}
