package gc

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// FuzzParseIntent: intent objects come from the store, which GC does not
// trust. Whatever the bytes, parseIntent returns an error or an intent
// whose base is a checkpoint's base key (manifest.ParseKey: GC deletes
// nothing else) and which round-trips through JSON.
func FuzzParseIntent(f *testing.F) {
	good, _ := json.Marshal(intent{Base: "ns/pod/ctr/20260101T000000Z-node-a-0123456789abcdef", Policy: "global",
		Limit: LimitCount, Reason: "r", Actor: "a", Time: time.Unix(1, 0).UTC()})
	f.Add(good)
	f.Add([]byte(`{"base":"../x"}`))
	f.Add([]byte(`{"base":"a/b/c/d","extra":1}`))
	f.Add([]byte(`{}{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := parseIntent(b)
		if err != nil {
			return
		}
		if _, ok := manifest.ParseKey(in.Base); !ok {
			t.Fatalf("accepted an intent naming %q, which is not a checkpoint's base key: %q", in.Base, b)
		}
		re, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseIntent(re)
		if err != nil || again.Base != in.Base || again.Policy != in.Policy {
			t.Fatalf("round trip of %q: %+v, %v", b, again, err)
		}
	})
}
