package termsafe

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// unescape inverts String; it exists to prove String loses nothing.
func unescape(s string) (string, error) {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		if i+1 >= len(s) {
			return "", errors.New("trailing backslash")
		}
		i++
		switch s[i] {
		case '\\':
			b = append(b, '\\')
		case 't':
			b = append(b, '\t')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 'x':
			if i+2 >= len(s) {
				return "", errors.New("short \\x")
			}
			n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", err
			}
			b = append(b, byte(n))
			i += 2
		case 'u':
			if i+4 >= len(s) {
				return "", errors.New("short \\u")
			}
			n, err := strconv.ParseUint(s[i+1:i+5], 16, 16)
			if err != nil {
				return "", err
			}
			b = utf8.AppendRune(b, rune(n))
			i += 4
		default:
			return "", errors.New("unknown escape")
		}
	}
	return string(b), nil
}

// safe reports the first thing in s a terminal could act on.
func unsafeAt(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return i
			}
		}
		if escaped(r) {
			return i
		}
	}
	return -1
}

func TestString(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{"plain-name_1.tar", "plain-name_1.tar"},
		{"ünïcödé 名前 🙂", "ünïcödé 名前 🙂"},
		{`a\b`, `a\\b`},
		{"a\tb\nc\rd", `a\tb\nc\rd`},
		{"\x1b[2Khidden", `\x1b[2Khidden`},
		{"x\x00\x07\x7f", `x\x00\x07\x7f`},
		{"c1 \u009b2J \u0085", `c1 \u009b2J \u0085`},
		{"line\u2028sep\u2029", `line\u2028sep\u2029`},
		{"rlo\u202eexe.tar\u2066", `rlo\u202eexe.tar\u2066`},
		{"bad\xff\xc3", `bad\xff\xc3`},
		{`forged \x1b`, `forged \\x1b`},
	} {
		got := String(tt.in)
		if got != tt.want {
			t.Errorf("String(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if back, err := unescape(got); err != nil || back != tt.in {
			t.Errorf("unescape(%q) = %q, %v; want %q", got, back, err, tt.in)
		}
	}
}

func TestStringNoAllocWhenClean(t *testing.T) {
	s := strings.Repeat("default/app-7d4b9c/app ", 10)
	if n := testing.AllocsPerRun(100, func() { _ = String(s) }); n != 0 {
		t.Errorf("String of a clean string allocates %v times", n)
	}
}

// TestEncodingJSON pins what encoding/json does and does not escape, which
// is why JSON output goes through JSON.
func TestEncodingJSON(t *testing.T) {
	in := "a\x1b\u2028\u2029\u009b\x7f\u202eb"
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, esc := range []string{`\u001b`, `\u2028`, `\u2029`} {
		if !bytes.Contains(raw, []byte(esc)) {
			t.Errorf("encoding/json no longer writes %s: %s", esc, raw)
		}
	}
	if !bytes.Contains(raw, []byte("\u009b")) || !bytes.Contains(raw, []byte("\x7f")) {
		t.Logf("encoding/json now escapes C1 and DEL itself: %q", raw)
	}
	safe := JSON(raw)
	if i := unsafeAt(string(bytes.ReplaceAll(safe, []byte("\n"), nil))); i >= 0 {
		t.Errorf("JSON left %q at %d", safe, i)
	}
	var back string
	if err := json.Unmarshal(safe, &back); err != nil || back != in {
		t.Errorf("JSON changed the value: %q, %v", back, err)
	}
	clean := []byte(`{"a": "b"}` + "\n")
	if out := JSON(clean); &out[0] != &clean[0] {
		t.Error("JSON copied a clean text")
	}
}

func TestWriter(t *testing.T) {
	var b bytes.Buffer
	enc := json.NewEncoder(Writer(&b))
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]string{"name": "x\u009by\x7f"}); err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"name\": \"x\\u009by\\u007f\"\n}\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// TestSlogJSON: the daemon's log is slog's JSON handler writing through
// Writer; a file name in an attribute reaches the log escaped.
func TestSlogJSON(t *testing.T) {
	name := "checkpoint-\x1b[2K\r\u2028\u009b\x7f\u202e.tar"
	var raw, safe bytes.Buffer
	slog.New(slog.NewJSONHandler(&raw, nil)).Info("rejected", "file", name)
	slog.New(slog.NewJSONHandler(Writer(&safe), nil)).Info("rejected", "file", name)
	if !bytes.Contains(raw.Bytes(), []byte("\u009b")) {
		t.Logf("log/slog now escapes C1 itself: %q", raw.String())
	}
	if i := unsafeAt(strings.TrimSuffix(safe.String(), "\n")); i >= 0 {
		t.Errorf("log line %q has a control at %d", safe.String(), i)
	}
	var rec map[string]any
	if err := json.Unmarshal(safe.Bytes(), &rec); err != nil || rec["file"] != name {
		t.Errorf("log line %q: %v, file %q", safe.String(), err, rec["file"])
	}
}

// FuzzString: the output never holds anything a terminal acts on, is
// valid UTF-8, and gives back the input exactly.
func FuzzString(f *testing.F) {
	for _, s := range []string{"", "a", "\x1b[2K\r", "\u2028\u009b", "\\x1b", "\xff\xfe", "\u202e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := String(s)
		if !utf8.ValidString(out) {
			t.Fatalf("String(%q) = %q is not valid UTF-8", s, out)
		}
		if i := unsafeAt(out); i >= 0 {
			t.Fatalf("String(%q) = %q leaves a control at %d", s, out, i)
		}
		back, err := unescape(out)
		if err != nil || back != s {
			t.Fatalf("unescape(String(%q)) = %q, %v", s, back, err)
		}
	})
}

// FuzzJSON: any string, encoded by encoding/json and passed through JSON,
// decodes to itself and holds no raw control outside JSON's own layout.
func FuzzJSON(f *testing.F) {
	f.Add("\u009b\x7f\u202e")
	f.Add("plain")
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := json.Marshal(map[string]string{s: s})
		if err != nil {
			t.Skip()
		}
		out := JSON(raw)
		if i := unsafeAt(string(out)); i >= 0 {
			t.Fatalf("JSON(%q) leaves a control at %d", out, i)
		}
		var back map[string]string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("JSON(%q) = %q does not decode: %v", raw, out, err)
		}
		var want map[string]string
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("JSON changed the value: %q -> %q", raw, out)
		}
	})
}

// BenchmarkString: the cost per table cell, for a typical clean key (the
// common case, no allocation) and a hostile one.
func BenchmarkString(b *testing.B) {
	for _, c := range []struct{ name, s string }{
		{"clean", "payments/api-0/server/20260313T214306Z-node-a-3f9c0a1b2c3d.tar.age"},
		{"hostile", "payments/\x1b[2K\rFORGED\u2028row\u009b2J\u202e/server/x.tar.age"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.s)))
			b.ReportAllocs()
			for b.Loop() {
				_ = String(c.s)
			}
		})
	}
}
