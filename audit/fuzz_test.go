package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func FuzzDecodeRecord(f *testing.F) {
	r := rec("uploaded", "payments", "pod-1", OK)
	r.Seq, r.Time, r.Node = 7, time.Unix(1700000000, 123).UTC(), "node-a"
	r.Prev[0] = 1
	r.Hash = r.computeHash()
	b, _ := r.MarshalBinary()
	f.Add(b)
	r2 := Record{Seq: 1, Node: "n", Action: "started", Outcome: Error}
	b2, _ := r2.MarshalBinary()
	f.Add(b2)
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		// Canonical: the bytes are the one encoding of the record.
		re, _ := r.MarshalBinary()
		if !bytes.Equal(re, b) {
			t.Fatalf("decoded record re-encodes differently")
		}
		// The JSON form (what segments carry) round-trips to the same hash.
		j, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Record
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatalf("JSON round trip: %v", err)
		}
		back.Time = back.Time.UTC()
		if back.computeHash() != r.computeHash() {
			t.Fatalf("JSON round trip changes the record")
		}
	})
}

func FuzzParseSegment(f *testing.F) {
	f.Add([]byte(`{"record":{"seq":1}}` + "\n" + `{"head":{"seq":1}}` + "\n"))
	f.Add([]byte(`{"head":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		seg, err := ParseSegment(SegmentKey("node-a", 1, 2), bytes.NewReader(b))
		if err != nil {
			if strings.Contains(err.Error(), "\x00") {
				t.Fatalf("error carries raw bytes: %q", err)
			}
			return
		}
		if len(seg.Records) != 2 || seg.Head.Hash != seg.Records[1].Hash {
			t.Fatalf("accepted a segment that does not cover its key")
		}
	})
}
