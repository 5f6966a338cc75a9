// Package k8sname holds the Kubernetes name rules, once, for every part of
// checkpoint-vault that accepts a namespace, pod, container or node name:
// the configuration (policy), the archive's identity (vault/checkpoint),
// object keys and manifests (vault/manifest), audit records (audit) and
// the dev command.
//
// The rules are Kubernetes' own (k8s.io/apimachinery/pkg/util/validation):
//
//   - namespace and container names are DNS-1123 labels: 1 to 63
//     characters from a-z, 0-9 and '-', starting and ending with a letter
//     or digit (ValidateNamespaceName; a pod's containers[].name);
//   - pod and node names are DNS-1123 subdomains: 1 to 253 characters, one
//     or more such labels joined by single dots (ValidatePodName,
//     ValidateNodeName). As in Kubernetes, a label inside a subdomain is
//     not limited to 63 characters: only the whole name is.
//
// A name that keeps these rules has no '/', no "..", no upper case, no
// white space and no control character, which is what lets it be an object
// key segment and be printed without escaping. Where two places used to
// carry their own approximation, a name could pass one and fail the next
// (a node "Worker_1" loaded fine and then every archive was refused); one
// rule makes every stage agree.
package k8sname

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Maximum lengths, in bytes (every allowed character is one byte).
const (
	MaxLabel     = 63
	MaxSubdomain = 253
)

// Rule is one of the two DNS-1123 name syntaxes.
type Rule struct {
	desc string // for messages: what a valid name looks like
	max  int
	dots bool
}

// The two rules.
var (
	Label     = Rule{desc: "a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit", max: MaxLabel}
	Subdomain = Rule{desc: "a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit", max: MaxSubdomain, dots: true}
)

// Valid reports whether s keeps the rule.
func (r Rule) Valid(s string) bool { return r.reason(s) == "" }

// Check returns nil if s keeps the rule, or an *Error naming what (for
// example "pod") and the first offending character.
func (r Rule) Check(what, s string) error {
	if why := r.reason(s); why != "" {
		return &Error{What: what, Name: s, Reason: why, Rule: r}
	}
	return nil
}

// reason is why s breaks the rule, or "" if it does not. It is a byte loop
// rather than a regular expression: names from archives are checked on
// every admission, and an untrusted name may be long.
func (r Rule) reason(s string) string {
	if s == "" {
		return "it is empty"
	}
	if len(s) > r.max {
		return fmt.Sprintf("it is %d characters long, more than %d", len(s), r.max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			continue
		case c == '-' || c == '.' && r.dots:
			// A part must start and end with a letter or digit: no
			// leading or trailing separator, no "..", "-." or ".-".
			if i == 0 || i == len(s)-1 {
				return fmt.Sprintf("it starts or ends with %q", c)
			}
			if s[i-1] == '.' || c == '.' && s[i-1] == '-' {
				return fmt.Sprintf("%q at offset %d follows %q", c, i, s[i-1])
			}
			continue
		case c == '.':
			return fmt.Sprintf("'.' at offset %d (a single label has no dots)", i)
		case c >= 'A' && c <= 'Z':
			return fmt.Sprintf("upper-case %q at offset %d", c, i)
		}
		ch, size := utf8.DecodeRuneInString(s[i:])
		if ch == utf8.RuneError && size == 1 {
			return fmt.Sprintf("byte %#02x at offset %d is not allowed", c, i)
		}
		return fmt.Sprintf("%q at offset %d is not allowed", ch, i)
	}
	return ""
}

// Kind is a kind of Kubernetes name that checkpoint-vault handles. Its
// value is the word used in messages and configuration keys.
type Kind string

// The kinds of name.
const (
	Namespace Kind = "namespace"
	Pod       Kind = "pod"
	Container Kind = "container"
	Node      Kind = "node"
)

// Rule is the rule Kubernetes applies to names of kind k.
func (k Kind) Rule() Rule {
	switch k {
	case Namespace, Container:
		return Label
	case Pod, Node:
		return Subdomain
	}
	panic(fmt.Sprintf("k8sname: unknown kind %q", string(k)))
}

// Valid reports whether s is a valid name of kind k.
func (k Kind) Valid(s string) bool { return k.Rule().Valid(s) }

// Check returns nil if s is a valid name of kind k, or an *Error.
func (k Kind) Check(s string) error { return k.Rule().Check(string(k), s) }

// Error says why a name breaks its rule.
type Error struct {
	What   string // what the name names: "pod", "node", "namespace", ...
	Name   string // the name as given
	Reason string // the first thing wrong with it
	Rule   Rule
}

// maxQuoted bounds how much of a refused name an error message repeats:
// names can come from hostile archives, and a message is not the place
// for a megabyte of them.
const maxQuoted = 80

func (e *Error) Error() string {
	name := e.Name
	if len(name) > maxQuoted {
		name = name[:maxQuoted]
		return fmt.Sprintf("invalid %s name %q... (%d bytes): %s; Kubernetes %s names are %s",
			e.What, name, len(e.Name), e.Reason, e.What, e.Rule.desc)
	}
	return fmt.Sprintf("invalid %s name %q: %s; Kubernetes %s names are %s", e.What, name, e.Reason, e.What, e.Rule.desc)
}

// FromHostname is the node name the kubelet derives from a host name when
// no --hostname-override is given: the host name with surrounding white
// space removed and lower-cased (k8s.io/component-helpers/node/util
// GetHostname). The result may still be invalid (an '_', say); callers
// Check it and ask for an explicit name rather than inventing one.
func FromHostname(host string) string {
	return strings.ToLower(strings.TrimSpace(host))
}

// Suggest maps s to a valid name of kind k for a message or a generated
// file to offer, or returns "" if it finds none: lower case, every other
// character that is not allowed becomes '-', separators are not repeated
// and the ends are trimmed. It is never applied to a name silently: a
// name is refused or taken as written.
func Suggest(k Kind, s string) string {
	r := k.Rule()
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case c == '.' && r.dots:
			b.WriteByte('.')
		default:
			b.WriteByte('-')
		}
		if b.Len() > r.max {
			break
		}
	}
	// Collapse what the rule forbids between parts: "..", ".-", "-.".
	out := b.String()
	for _, bad := range [][2]string{{"..", "."}, {".-", "."}, {"-.", "."}} {
		for strings.Contains(out, bad[0]) {
			out = strings.ReplaceAll(out, bad[0], bad[1])
		}
	}
	if len(out) > r.max {
		out = out[:r.max]
	}
	out = strings.Trim(out, "-.")
	if !r.Valid(out) {
		return ""
	}
	return out
}
