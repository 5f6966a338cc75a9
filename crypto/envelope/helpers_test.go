package envelope

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/plugin"
	"filippo.io/age/tag"
	"filippo.io/hpke"
	"golang.org/x/crypto/ssh"
)

// keyPair is a recipient string and, where this process can decrypt for
// it, the identity.
type keyPair struct {
	recipient string
	identity  age.Identity // nil for tag recipients (hardware keys)
	secret    string       // identity encoding, for key files; "" if none
}

func genX25519(t testing.TB) keyPair {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{id.Recipient().String(), id, id.String()}
}

func genHybrid(t testing.TB) keyPair {
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{id.Recipient().String(), id, id.String()}
}

func genEd25519(t testing.TB) (keyPair, ed25519.PrivateKey) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	id, err := agessh.NewEd25519Identity(priv)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{recipient: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " alice@example", identity: id}, priv
}

var rsaKeys sync.Map // bits -> *rsa.PrivateKey; RSA generation is slow

func genRSA(t testing.TB, bits int) keyPair {
	k, ok := rsaKeys.Load(bits)
	if !ok {
		priv, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		k, _ = rsaKeys.LoadOrStore(bits, priv)
	}
	priv := k.(*rsa.PrivateKey)
	pub, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := agessh.NewRSAIdentity(priv)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{recipient: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), identity: id}
}

func genTag(t testing.TB) keyPair {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x, y := elliptic.Unmarshal(elliptic.P256(), k.PublicKey().Bytes()) //nolint:staticcheck // only to compress a point
	r, err := tag.NewClassicRecipient(elliptic.MarshalCompressed(elliptic.P256(), x, y))
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{recipient: r.String()}
}

func genTagPQ(t testing.TB) keyPair {
	k, err := hpke.MLKEM768P256().GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	r, err := tag.NewHybridRecipient(k.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{recipient: r.String()}
}

var (
	pluginOnce sync.Once
	pluginDir  string
	pluginErr  error
)

// testPluginDir builds testdata/age-plugin-cktest once per test binary run.
func testPluginDir(t testing.TB) string {
	t.Helper()
	pluginOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ckvault-plugin-")
		if err != nil {
			pluginErr = err
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "age-plugin-cktest"), "./testdata/age-plugin-cktest").CombinedOutput()
		if err != nil {
			pluginErr = err
			pluginErr = &exec.Error{Name: "go build age-plugin-cktest: " + string(out), Err: err}
			return
		}
		pluginDir = dir
	})
	if pluginErr != nil {
		t.Fatalf("building the test plugin: %v", pluginErr)
	}
	return pluginDir
}

// genPlugin returns a cktest plugin recipient and its plugin identity. With
// variable set, the plugin's stanzas vary in size between files.
func genPlugin(t testing.TB, variable bool) keyPair {
	x := genX25519(t)
	data := x.recipient
	if variable {
		data = "var:" + data
	}
	return keyPair{
		recipient: plugin.EncodeRecipient("cktest", []byte(data)),
		secret:    plugin.EncodeIdentity("cktest", []byte(x.secret)),
		identity:  x.identity, // the plugin's stanzas are X25519 ones
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pluginDir != "" {
		os.RemoveAll(pluginDir)
	}
	os.Exit(code)
}
