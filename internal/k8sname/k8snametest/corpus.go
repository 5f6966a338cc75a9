// Package k8snametest holds the shared corpus of names that every place
// checking a Kubernetes name is tested against, so that a test in each
// package proves they all accept and refuse the same names.
package k8snametest

import "strings"

// Case is a name and whether Kubernetes accepts it as a DNS-1123 label
// (namespace, container) and as a DNS-1123 subdomain (pod, node), per
// k8s.io/apimachinery/pkg/util/validation IsDNS1123Label and
// IsDNS1123Subdomain.
type Case struct {
	Name             string
	Label, Subdomain bool
}

// Corpus covers every rule: alphabet, case, separators at the ends and
// next to each other, lengths at and past each limit (a label inside a
// subdomain is not itself limited to 63), control and non-ASCII characters
// and invalid UTF-8.
var Corpus = []Case{
	{"a", true, true},
	{"0", true, true},
	{"abc", true, true},
	{"a-b", true, true},
	{"a--b", true, true},
	{"123-abc", true, true},
	{"node-a", true, true},
	{"worker-1", true, true},
	{"a.b", false, true},
	{"a.b.c", false, true},
	{"worker-1.example.com", false, true},
	{"0.0", false, true},
	{"", false, false},
	{"-a", false, false},
	{"a-", false, false},
	{"-", false, false},
	{".a", false, false},
	{"a.", false, false},
	{".", false, false},
	{"..", false, false},
	{"a..b", false, false},
	{"a.-b", false, false},
	{"a-.b", false, false},
	{"A", false, false},
	{"Worker_1", false, false},
	{"worker_1", false, false},
	{"node-A", false, false},
	{"Node-a.local", false, false},
	{"a b", false, false},
	{" a", false, false},
	{"a\n", false, false},
	{"a/b", false, false},
	{"a\\b", false, false},
	{"a:b", false, false},
	{"a\x1b[2Kb", false, false},
	{"a\rb", false, false},
	{"a\x00", false, false},
	{"a\u2028b", false, false},
	{"a\u009bb", false, false},
	{"é", false, false},
	{"a\xffb", false, false},
	{strings.Repeat("a", 63), true, true},
	{strings.Repeat("a", 64), false, true},
	{strings.Repeat("a", 64) + ".b", false, true},
	{strings.Repeat("a", 253), false, true},
	{strings.Repeat("a", 254), false, false},
	{strings.Repeat("a", 62) + "-", false, false},
	{strings.Repeat("ab.", 84) + "a", false, true}, // 253 characters
	{strings.Repeat("ab.", 84) + "ab", false, false},
}
