package envelope

import (
	"errors"
	"strings"
	"testing"
)

// recipientSeeds are one recipient of every kind, plus near misses.
func recipientSeeds(f *testing.F) []string {
	ed, _ := genEd25519(f)
	x := genX25519(f)
	return []string{
		x.recipient, strings.ToUpper(x.recipient), genHybrid(f).recipient,
		ed.recipient, genRSA(f, 2048).recipient, genTag(f).recipient, genTagPQ(f).recipient,
		genPlugin(f, false).recipient, x.secret, "age1", "age1pq1", "ssh-ed25519 AAAA", "", "#",
		"age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
	}
}

func FuzzParseRecipient(f *testing.F) {
	for _, s := range recipientSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRecipient(s)
		if err != nil {
			if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(s)), "AGE-") && len(s) > 20 && strings.Contains(err.Error(), strings.TrimSpace(s)) {
				t.Fatalf("error echoes a possible secret key: %v", err)
			}
			return
		}
		// Round trip: the canonical form parses to itself, same fingerprint.
		r2, err := ParseRecipient(r.Text)
		if err != nil {
			t.Fatalf("canonical form %q does not parse: %v", r.Text, err)
		}
		if r2.Text != r.Text || r2.Kind != r.Kind || r2.Fingerprint != r.Fingerprint || r.Fingerprint != Fingerprint(s) {
			t.Fatalf("round trip changed the recipient: %+v vs %+v", r, r2)
		}
		if _, err := NewRecipientSet(r); err != nil {
			t.Fatalf("a parsed recipient is not a valid set: %v", err)
		}
	})
}

// FuzzParseRecipientsFile fuzzes the file structure (comments, blank
// lines, CRLF, indentation, several kinds per file); FuzzParseRecipient
// covers each recipient parser. The seeds are deliberately short: the
// hybrid post-quantum recipient is about 2 KB, and the fuzzer minimizes
// every input that finds new coverage by re-running it once per byte
// removed, so a 2 KB seed kept both workers minimizing for the whole run
// (a handful of execs counted in 10 s).
func FuzzParseRecipientsFile(f *testing.F) {
	seeds := recipientSeeds(f)
	x, upper, ed, tag, secret := seeds[0], seeds[1], seeds[3], seeds[5], seeds[8]
	f.Add(strings.Join([]string{x, upper, ed}, "\n"))
	f.Add("# comment\n\n" + tag + "\r\n  " + ed + "\n")
	f.Add(secret + "\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseRecipientsFile(strings.NewReader(s), "fuzz.txt")
		if err != nil {
			if !strings.Contains(err.Error(), `"fuzz.txt"`) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(rs) == 0 {
			t.Fatal("no error and no recipients")
		}
		set, err := NewRecipientSet(rs...)
		if err != nil && !errors.Is(err, ErrMixedRecipients) {
			t.Fatalf("NewRecipientSet: %v", err)
		}
		if err == nil && len(set.Fingerprints()) > len(rs) {
			t.Fatal("set larger than its input")
		}
	})
}
