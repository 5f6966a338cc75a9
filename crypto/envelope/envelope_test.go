package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
)

func TestParseRecipient(t *testing.T) {
	x := genX25519(t)
	h := genHybrid(t)
	ed, _ := genEd25519(t)
	rsa := genRSA(t, 2048)
	tg := genTag(t)
	tq := genTagPQ(t)
	pl := genPlugin(t, false)
	dir := testPluginDir(t)

	tests := []struct {
		name    string
		in      string
		opts    Options
		kind    Kind
		text    string // canonical form; "" means in
		wantErr string // substring
		secret  string // must not appear in the error
	}{
		{name: "x25519", in: x.recipient, kind: KindX25519},
		{name: "x25519 upper case", in: strings.ToUpper(x.recipient), kind: KindX25519, text: x.recipient},
		{name: "x25519 surrounding space", in: "  " + x.recipient + "\t", kind: KindX25519, text: x.recipient},
		{name: "hybrid", in: h.recipient, kind: KindHybrid},
		{name: "ssh-ed25519 with comment", in: ed.recipient, kind: KindSSHEd25519, text: strings.TrimSuffix(ed.recipient, " alice@example")},
		{name: "ssh-rsa", in: rsa.recipient, kind: KindSSHRSA},
		{name: "tag", in: tg.recipient, kind: KindTag},
		{name: "tagpq", in: tq.recipient, kind: KindTagPQ},
		{name: "plugin", in: pl.recipient, opts: Options{PluginDir: dir}, kind: KindPlugin},
		{name: "plugin without dir", in: pl.recipient, wantErr: "no plugin directory"},
		{name: "plugin relative dir", in: pl.recipient, opts: Options{PluginDir: "plugins"}, wantErr: "absolute"},
		{name: "plugin missing binary", in: pl.recipient, opts: Options{PluginDir: t.TempDir()}, wantErr: "install age-plugin-cktest"},
		{name: "empty", in: "  ", wantErr: "empty"},
		{name: "x25519 identity", in: x.secret, wantErr: "secret key", secret: x.secret},
		{name: "hybrid identity", in: h.secret, wantErr: "secret key", secret: h.secret},
		{name: "unknown", in: "hunter2-not-a-key", wantErr: "unknown recipient type", secret: "hunter2"},
		{name: "bad checksum", in: x.recipient[:len(x.recipient)-1] + "q", wantErr: "recipient"},
		{name: "mixed case", in: "Age1" + x.recipient[4:], wantErr: "mixed"},
		{name: "truncated hybrid", in: h.recipient[:100], wantErr: "recipient"},
		{name: "newline inside", in: x.recipient + "\n" + x.recipient, wantErr: "invalid characters"},
		{name: "ssh-dss", in: "ssh-dss AAAAB3NzaC1kc3MAAACBAP1", wantErr: "SSH"},
		{name: "too long", in: "age1" + strings.Repeat("q", maxLineLength), wantErr: "allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.opts.ParseRecipient(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRecipient succeeded, want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
					t.Errorf("error leaks the input: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRecipient: %v", err)
			}
			want := tc.text
			if want == "" {
				want = strings.TrimSpace(tc.in)
			}
			if r.Kind != tc.kind || r.Text != want || r.Fingerprint != Fingerprint(want) || r.Age == nil {
				t.Errorf("got kind %s text %.30q fp %s, want %s %.30q %s", r.Kind, r.Text, r.Fingerprint, tc.kind, want, Fingerprint(want))
			}
			// The canonical form parses to itself.
			r2, err := tc.opts.ParseRecipient(r.Text)
			if err != nil || r2.Text != r.Text {
				t.Errorf("canonical form does not round-trip: %v", err)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	x := genX25519(t)
	ed, _ := genEd25519(t)
	fp := Fingerprint(x.recipient)
	if !regexp.MustCompile(`^ckfp1[a-z2-7]{16}$`).MatchString(fp) {
		t.Fatalf("fingerprint %q has the wrong shape", fp)
	}
	// The documented construction, computed independently.
	sum := sha256.Sum256([]byte(x.recipient))
	want := "ckfp1" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:10]))
	if fp != want {
		t.Errorf("Fingerprint = %s, documented construction gives %s", fp, want)
	}
	// A fixed vector: the format spec depends on this never changing.
	const vec = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
	if got := Fingerprint(vec); got != "ckfp1"+strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sha256Of(vec)[:10])) {
		t.Errorf("Fingerprint(%s) = %s", vec, got)
	}
	if Fingerprint(strings.ToUpper(x.recipient)) != fp || Fingerprint(" "+x.recipient+"\n") != fp {
		t.Error("fingerprint depends on case or surrounding space")
	}
	edBare := strings.TrimSuffix(ed.recipient, " alice@example")
	if Fingerprint(ed.recipient) != Fingerprint(edBare) || Fingerprint(`no-pty `+ed.recipient) != Fingerprint(edBare) {
		t.Error("SSH fingerprint depends on comment or options")
	}
	if Fingerprint(genX25519(t).recipient) == fp {
		t.Error("two recipients share a fingerprint")
	}
}

func sha256Of(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func TestParseRecipientsFile(t *testing.T) {
	a, b := genHybrid(t), genHybrid(t)
	ed, _ := genEd25519(t)
	good := fmt.Sprintf("# team keys\n\n%s\n   # indented comment\n%s  \r\n%s\n", a.recipient, b.recipient, ed.recipient)
	rs, err := ParseRecipientsFile(strings.NewReader(good), "team.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].Text != a.recipient || rs[1].Text != b.recipient || rs[2].Kind != KindSSHEd25519 {
		t.Fatalf("parsed %d recipients: %+v", len(rs), rs)
	}

	x := genX25519(t)
	bad := []struct {
		name, in, want, secret string
	}{
		{"empty", "", `"r.txt" has no recipients`, ""},
		{"only comments", "# nobody\n\n", "has no recipients", ""},
		{"identity", "# k\n" + x.secret + "\n", `"r.txt", line 2: an identity`, x.secret},
		{"garbage on line 3", a.recipient + "\n\nnot-a-key\n", `"r.txt", line 3`, "not-a-key"},
		{"long line", a.recipient + "\n" + strings.Repeat("a", maxLineLength+10) + "\n", "line 2: line longer", ""},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipientsFile(strings.NewReader(tc.in), "r.txt")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error leaks line content: %v", err)
			}
		})
	}

	path := filepath.Join(t.TempDir(), "recipients")
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if rs, err := LoadRecipientsFile(path); err != nil || len(rs) != 3 {
		t.Fatalf("LoadRecipientsFile: %d, %v", len(rs), err)
	}
	if _, err := LoadRecipientsFile(path + ".missing"); err == nil || !strings.Contains(err.Error(), "recipients.missing") {
		t.Errorf("missing file error %v does not name the file", err)
	}
}

func mustParse(t testing.TB, o Options, ss ...string) []Recipient {
	t.Helper()
	var out []Recipient
	for _, s := range ss {
		r, err := o.ParseRecipient(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestRecipientSet(t *testing.T) {
	if _, err := NewRecipientSet(); err == nil || !strings.Contains(err.Error(), "at least one recipient") {
		t.Errorf("empty set: %v", err)
	}
	if _, err := NewRecipientSet(Recipient{}); err == nil {
		t.Error("zero Recipient accepted")
	}
	a, b := genHybrid(t), genHybrid(t)
	rs := mustParse(t, Options{}, a.recipient, b.recipient, strings.ToUpper(a.recipient), genTagPQ(t).recipient)
	s, err := NewRecipientSet(rs...)
	if err != nil {
		t.Fatal(err)
	}
	fps := s.Fingerprints()
	if len(fps) != 3 || !slices.IsSorted(fps) || len(s.Recipients()) != 3 {
		t.Errorf("duplicates not collapsed or not sorted: %v", fps)
	}
	if !s.PostQuantum() {
		t.Error("hybrid set is not post-quantum")
	}

	ed, _ := genEd25519(t)
	for _, classic := range []string{genX25519(t).recipient, ed.recipient, genTag(t).recipient} {
		mixed := mustParse(t, Options{}, a.recipient, classic)
		_, err := NewRecipientSet(mixed...)
		if !errors.Is(err, ErrMixedRecipients) {
			t.Fatalf("mixing %s: error %v, want ErrMixedRecipients", mixed[1].Kind, err)
		}
		for _, want := range []string{mixed[1].Fingerprint, "quantum", "ckvault keygen", "--classic"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("mixing error does not mention %q: %v", want, err)
			}
		}
	}
	cs, err := NewRecipientSet(mustParse(t, Options{}, genX25519(t).recipient, ed.recipient, genRSA(t, 2048).recipient, genTag(t).recipient)...)
	if err != nil || cs.PostQuantum() {
		t.Fatalf("classic set: %v, pq=%v", err, cs != nil && cs.PostQuantum())
	}
}

// Sizes named by the issue: empty, one byte, around one chunk, and several
// chunks with a tail.
var sizeCases = []int64{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 7}

func TestCiphertextSizeExact(t *testing.T) {
	dir := testPluginDir(t)
	opts := Options{PluginDir: dir}
	gens := map[string]func() keyPair{
		"x25519":      func() keyPair { return genX25519(t) },
		"hybrid":      func() keyPair { return genHybrid(t) },
		"ssh-ed25519": func() keyPair { k, _ := genEd25519(t); return k },
		"ssh-rsa":     func() keyPair { return genRSA(t, 2048) },
		"tag":         func() keyPair { return genTag(t) },
		"tagpq":       func() keyPair { return genTagPQ(t) },
		"plugin":      func() keyPair { return genPlugin(t, false) },
	}
	plaintext := make([]byte, 3*ChunkSize+7)
	for i := range plaintext {
		plaintext[i] = byte(i * 7)
	}
	for name, gen := range gens {
		for _, n := range []int{1, 3} {
			t.Run(fmt.Sprintf("%s/%d", name, n), func(t *testing.T) {
				var keys []keyPair
				var strs []string
				for range n {
					k := gen()
					keys = append(keys, k)
					strs = append(strs, k.recipient)
				}
				if name == "ssh-rsa" && n > 1 {
					// Different modulus sizes give different stanza sizes.
					k := genRSA(t, 3072)
					keys[1], strs[1] = k, k.recipient
				}
				set, err := NewRecipientSet(mustParse(t, opts, strs...)...)
				if err != nil {
					t.Fatal(err)
				}
				for _, size := range sizeCases {
					want, err := set.CiphertextSize(size)
					if err != nil {
						t.Fatal(err)
					}
					var buf bytes.Buffer
					w, err := set.Encrypt(&buf)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := w.Write(plaintext[:size]); err != nil {
						t.Fatal(err)
					}
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
					if int64(buf.Len()) != want {
						t.Fatalf("plaintext %d bytes: predicted %d, got %d", size, want, buf.Len())
					}
					if hdr, _ := set.HeaderSize(); hdr+NonceSize+PayloadSize(size) != want {
						t.Fatalf("HeaderSize %d + nonce + PayloadSize %d != CiphertextSize %d", hdr, PayloadSize(size), want)
					}
					// Every recipient that we hold an identity for can read it.
					for i, k := range keys {
						if k.identity == nil {
							continue
						}
						r, err := Decrypt(bytes.NewReader(buf.Bytes()), k.identity)
						if err != nil {
							t.Fatalf("recipient %d: %v", i, err)
						}
						got, err := io.ReadAll(r)
						if err != nil || !bytes.Equal(got, plaintext[:size]) {
							t.Fatalf("recipient %d: round trip failed: %v", i, err)
						}
					}
				}
			})
		}
	}
	if _, err := (&RecipientSet{}).CiphertextSize(-1); err == nil {
		t.Error("negative size accepted")
	}
}

func TestPluginOnlyFromPluginDir(t *testing.T) {
	dir := testPluginDir(t)
	pl := genPlugin(t, false)
	// The plugin is on $PATH, but no plugin dir is configured: refused.
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if _, err := ParseRecipient(pl.recipient); !errors.Is(err, ErrPluginDir) {
		t.Fatalf("plugin found without a plugin dir: %v", err)
	}
	// Configured in another directory than $PATH's: still found, and $PATH
	// is restored afterwards.
	other := t.TempDir()
	t.Setenv("PATH", other)
	set, err := NewRecipientSet(mustParse(t, Options{PluginDir: dir}, pl.recipient)...)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := set.Encrypt(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello"))
	w.Close()
	if os.Getenv("PATH") != other {
		t.Errorf("PATH not restored: %q", os.Getenv("PATH"))
	}
	// A plugin identity decrypts it, through the plugin.
	keyFile := filepath.Join(t.TempDir(), "plugin.key")
	os.WriteFile(keyFile, []byte(pl.secret+"\n"), 0o600)
	if _, err := LoadIdentities([]string{keyFile}, IdentityOptions{}); !errors.Is(err, ErrPluginDir) {
		t.Fatalf("plugin identity accepted without a plugin dir: %v", err)
	}
	ids, err := LoadIdentities([]string{keyFile}, IdentityOptions{PluginDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ids[0].(*pluginIdentity); !ok {
		t.Fatalf("identity is %T, want a plugin identity", ids[0])
	}
	r, err := Decrypt(bytes.NewReader(buf.Bytes()), ids...)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || string(got) != "hello" {
		t.Fatalf("plugin decrypt: %q, %v", got, err)
	}
}

func TestPluginVariableStanzaRefused(t *testing.T) {
	dir := testPluginDir(t)
	set, err := NewRecipientSet(mustParse(t, Options{PluginDir: dir}, genPlugin(t, true).recipient)...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := set.CiphertextSize(10); err != nil {
		t.Fatal(err)
	}
	// The padding is 1..32 random bytes; within 20 files a size differs
	// from the measured one with overwhelming probability.
	for range 20 {
		var buf bytes.Buffer
		w, err := set.Encrypt(&buf)
		if errors.Is(err, ErrStanzaSize) {
			if buf.Len() != 0 {
				t.Errorf("%d bytes written before the size error", buf.Len())
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	t.Fatal("variable-size plugin stanzas were never detected")
}

func writeKey(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadIdentitiesAndDecrypt(t *testing.T) {
	dir := t.TempDir()
	x, h := genX25519(t), genHybrid(t)
	ed, edPriv := genEd25519(t)
	edEnc, edEncPriv := genEd25519(t)

	plainPEM, err := ssh.MarshalPrivateKey(edPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	encPEM, err := ssh.MarshalPrivateKeyWithPassphrase(edEncPriv, "", []byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	files := []string{
		writeKey(t, dir, "x.key", "# created: now\n# public key: "+x.recipient+"\n"+x.secret+"\n", 0o600),
		writeKey(t, dir, "pq.key", h.secret+"\n", 0o600),
		writeKey(t, dir, "id_ed25519", string(pem.EncodeToMemory(plainPEM)), 0o600),
		writeKey(t, dir, "id_enc", string(pem.EncodeToMemory(encPEM)), 0o600),
	}
	asked := 0
	opts := IdentityOptions{Passphrase: func(path string) ([]byte, error) {
		asked++
		if path != files[3] {
			t.Errorf("passphrase asked for %s", path)
		}
		return []byte("correct horse"), nil
	}}
	ids, err := LoadIdentities(files, opts)
	if err != nil {
		t.Fatal(err)
	}
	if asked != 0 {
		t.Error("passphrase asked before it was needed")
	}
	for _, k := range []keyPair{x, h, ed, edEnc} {
		set, err := NewRecipientSet(mustParse(t, Options{}, k.recipient)...)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		w, _ := set.Encrypt(&buf)
		io.WriteString(w, "secret memory")
		w.Close()
		r, err := Decrypt(&buf, ids...)
		if err != nil {
			t.Fatalf("%s: %v", k.recipient[:12], err)
		}
		if got, err := io.ReadAll(r); err != nil || string(got) != "secret memory" {
			t.Fatalf("%s: %q %v", k.recipient[:12], got, err)
		}
	}
	if asked != 1 {
		t.Errorf("passphrase asked %d times, want 1", asked)
	}

	// Wrong identity.
	set, _ := NewRecipientSet(mustParse(t, Options{}, genX25519(t).recipient)...)
	var buf bytes.Buffer
	w, _ := set.Encrypt(&buf)
	w.Write(make([]byte, 3*ChunkSize))
	w.Close()
	ct := buf.Bytes()
	if _, err := Decrypt(bytes.NewReader(ct), ids...); !errors.Is(err, age.ErrIncorrectIdentity) {
		t.Errorf("wrong identity: %v, want ErrIncorrectIdentity", err)
	}
}

func TestDecryptDamaged(t *testing.T) {
	k := genHybrid(t)
	set, _ := NewRecipientSet(mustParse(t, Options{}, k.recipient)...)
	var buf bytes.Buffer
	w, _ := set.Encrypt(&buf)
	w.Write(bytes.Repeat([]byte("x"), 2*ChunkSize+100))
	w.Close()
	ct := buf.Bytes()
	cases := map[string][]byte{
		"truncated at a chunk boundary": ct[:len(ct)-(100+TagSize)],
		"truncated mid chunk":           ct[:len(ct)-50],
		"flipped last byte":             flip(ct, len(ct)-1),
		"flipped first payload byte":    flip(ct, len(ct)-(2*(ChunkSize+TagSize)+100+TagSize)),
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r, err := Decrypt(bytes.NewReader(c), k.identity)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(r)
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("read error %v, want ErrDamaged", err)
			}
		})
	}
	if _, err := Decrypt(bytes.NewReader(flip(ct, 30)), k.identity); err == nil {
		t.Error("flipped header byte accepted")
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestIdentityFileErrors(t *testing.T) {
	dir := t.TempDir()
	x := genX25519(t)
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))

	loose := writeKey(t, dir, "loose.key", x.secret+"\n", 0o644)
	if _, err := LoadIdentities([]string{loose}, IdentityOptions{Logger: log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "readable by group or others") || !strings.Contains(logged.String(), loose) {
		t.Errorf("no warning for a world-readable key: %q", logged.String())
	}
	logged.Reset()
	tight := writeKey(t, dir, "tight.key", x.secret+"\n", 0o600)
	LoadIdentities([]string{tight}, IdentityOptions{Logger: log})
	if logged.Len() != 0 {
		t.Errorf("warning for a 0600 key: %q", logged.String())
	}

	bad := []struct{ name, content, want string }{
		{"recipient in identity file", "# x\n" + x.recipient + "\n", "line 2: this is a recipient"},
		{"corrupt key", x.secret[:len(x.secret)-2] + "QQ\n", "line 1: malformed X25519"},
		{"nothing", "# empty\n", "holds no identities"},
		{"garbage pem", "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "SSH private key"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p := writeKey(t, dir, "bad.key", tc.content, 0o600)
			_, err := LoadIdentities([]string{p}, IdentityOptions{Logger: log})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %v, want %q naming the file", err, tc.want)
			}
			if strings.Contains(err.Error(), x.secret[16:40]) {
				t.Errorf("error leaks key material: %v", err)
			}
		})
	}
	if _, err := LoadIdentities(nil, IdentityOptions{}); err == nil {
		t.Error("no identity files accepted")
	}

	// Encrypted SSH key without a passphrase source: fails at use, clearly.
	_, priv := genEd25519(t)
	encPEM, _ := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("pw"))
	p := writeKey(t, dir, "id_enc", string(pem.EncodeToMemory(encPEM)), 0o600)
	ids, err := LoadIdentities([]string{p}, IdentityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ssh.NewPublicKey(priv.Public())
	set, _ := NewRecipientSet(mustParse(t, Options{}, string(ssh.MarshalAuthorizedKey(pub)))...)
	var buf bytes.Buffer
	w, _ := set.Encrypt(&buf)
	w.Close()
	if _, err := Decrypt(&buf, ids...); err == nil || !strings.Contains(err.Error(), "no passphrase source") {
		t.Errorf("encrypted key without passphrase: %v", err)
	}
}

func TestDefaultPassphraseEnv(t *testing.T) {
	t.Setenv(EnvIdentityPassphrase, "from env")
	if p, err := DefaultPassphrase("k"); err != nil || string(p) != "from env" {
		t.Errorf("env: %q %v", p, err)
	}
	os.Unsetenv(EnvIdentityPassphrase)
	f := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(f, []byte("from file\n"), 0o600)
	t.Setenv(EnvIdentityPassphraseFile, f)
	if p, err := DefaultPassphrase("k"); err != nil || string(p) != "from file" {
		t.Errorf("file: %q %v", p, err)
	}
}

func TestEncryptedIdentityFile(t *testing.T) {
	x := genX25519(t)
	sr, _ := age.NewScryptRecipient("pw")
	sr.SetWorkFactor(10)
	var enc bytes.Buffer
	w, _ := age.Encrypt(&enc, sr)
	io.WriteString(w, x.secret+"\n")
	w.Close()
	p := writeKey(t, t.TempDir(), "x.key.age", enc.String(), 0o600)
	if _, err := LoadIdentities([]string{p}, IdentityOptions{}); err == nil {
		t.Error("encrypted identity file loaded without a passphrase")
	}
	ids, err := LoadIdentities([]string{p}, IdentityOptions{Passphrase: func(string) ([]byte, error) { return []byte("pw"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ids[0].(*age.X25519Identity); !ok || len(ids) != 1 {
		t.Fatalf("got %T", ids[0])
	}
}

func TestGenerateIdentity(t *testing.T) {
	for _, pq := range []bool{true, false} {
		id, rc, err := GenerateIdentity(pq)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseRecipient(rc)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind.PostQuantum() != pq {
			t.Errorf("postQuantum=%v gave a %s recipient", pq, r.Kind)
		}
		prefix := "AGE-SECRET-KEY-1"
		if pq {
			prefix = "AGE-SECRET-KEY-PQ-1"
		}
		if !strings.HasPrefix(id, prefix) {
			t.Errorf("identity has the wrong prefix: %.20s", id)
		}
		ids, err := parseIdentityLines("gen", []byte(id), IdentityOptions{})
		if err != nil {
			t.Fatal(err)
		}
		set, _ := NewRecipientSet(r)
		var buf bytes.Buffer
		w, _ := set.Encrypt(&buf)
		w.Close()
		if _, err := Decrypt(&buf, ids...); err != nil {
			t.Errorf("generated pair does not match: %v", err)
		}
	}
}
